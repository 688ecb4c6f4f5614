#!/usr/bin/env bash
# Installs everything importer and its tests need on a fresh Debian 12 machine (run as root):
# system tools from Debian, then a virtualenv in .venv with the package and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-utils qemu-block-extra nbdkit libnbd-bin nginx pigz zstd xz-utils curl
              apache2-utils util-linux mount procps e2fsprogs fdisk python3-venv
              swift swift-proxy swift-object swift-container swift-account
              glance-api keystone  # the Glance source and openstack-populator tests
              zsh  # the zsh completion's syntax check
              docker-registry skopeo gcc libc6-dev
              python3-dev libxml2-dev  # to build ovirt-imageio and ovirt-engine-sdk-python
              nbdkit-plugin-dev golang-go golang-github-vmware-govmomi-dev)  # VDDK tests: the
              # stand-in vddk plugin, and the vCenter simulator built from Debian's govmomi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup: Python 3.11 or newer is required (found $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml requirements/ci.lock | sha256sum | cut -c1-16)
if [ ! -e "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # exactly the files of the lock (hash-checked), then the package itself without resolving
  # again: every CI run tests the same dependencies (scripts/lock.sh regenerates the lock)
  .venv/bin/python -m pip install -q --require-hashes -r requirements/ci.lock
  .venv/bin/python -m pip install -q --no-deps -e .
  rm -f .venv/.installed-* && touch "$stamp"
fi
echo "setup: ready ($(.venv/bin/importer --version))" >&2

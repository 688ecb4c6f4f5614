#!/usr/bin/env bash
# Builds the importer image (localhost/importer:ci) with buildah, the way that works on this
# project's machines (rootful, no registry reachable): podman/buildah settings for this host, a Debian base made with debootstrap when
# no registry is reachable (kept between runs), and the host CA bundle as a build secret.
# Prints the environment podman needs; tests source it: eval "$(scripts/container.sh --env)".
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${IMPORTER_CONTAINER_WORK:-/var/tmp/importer-containers}
BASE_IMAGE=localhost/debian-base:bookworm
IMAGE=${IMPORTER_IMAGE:-localhost/importer:ci}

mkdir -p "$WORK"
cat > "$WORK/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/runroot"
CONF
cat > "$WORK/containers.conf" <<'CONF'
[containers]
netns = "host"
# root here lacks CAP_SYS_RESOURCE and podman lowers its own nproc: its default limits fail
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
# crun refuses this host's hybrid cgroup layout; runc works
runtime = "runc"
CONF
export CONTAINERS_STORAGE_CONF=$WORK/storage.conf CONTAINERS_CONF=$WORK/containers.conf
if [ "${1:-}" = "--env" ]; then
  echo "export CONTAINERS_STORAGE_CONF=$CONTAINERS_STORAGE_CONF CONTAINERS_CONF=$CONTAINERS_CONF"
  exit 0
fi

need=()
for p in podman buildah runc conmon catatonit uidmap slirp4netns containernetworking-plugins \
         golang-github-containers-common iptables debootstrap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if ((${#need[@]})); then
  echo "container: installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

if ! podman image exists "$BASE_IMAGE"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "container: building $BASE_IMAGE with debootstrap from $mirror (first run only)" >&2
  rm -rf "$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$WORK/rootfs" "$mirror" >/dev/null
  rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
  tar --numeric-owner -C "$WORK/rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$BASE_IMAGE" >/dev/null
  rm -rf "$WORK/rootfs"
fi

echo "container: building $IMAGE" >&2
buildah bud --pull=never --isolation chroot --network host --layers --quiet \
  --secret id=buildca,src=/etc/ssl/certs/ca-certificates.crt \
  --build-arg BASE="$BASE_IMAGE" -t "$IMAGE" -f Containerfile . >/dev/null
for role in uploadserver cloner; do  # CDI's other two images: the same layers, their entrypoints
  buildah bud --pull=never --isolation chroot --network host --layers --quiet \
    --secret id=buildca,src=/etc/ssl/certs/ca-certificates.crt \
    --build-arg BASE="$BASE_IMAGE" --target "$role" -t "${IMAGE%:*}-$role:${IMAGE##*:}" \
    -f Containerfile . >/dev/null
done
echo "container: $IMAGE ready (and ${IMAGE%:*}-uploadserver, ${IMAGE%:*}-cloner)" >&2

#!/usr/bin/env bash
# Regenerates the hash-pinned lock files after a dependency changes in pyproject.toml:
#   requirements/container.lock  what the image installs (the [all] extra)
#   requirements/ci.lock         what scripts/setup.sh installs (the [all,test] extras)
# Both are installed with --require-hashes, so the image and CI builds get exactly these files.
# pip-tools runs from a throw-away virtualenv; the lock is for CPython 3.11 on Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install -q 'pip-tools>=7.4'
compile() {
  "$tools/bin/pip-compile" -q --generate-hashes --strip-extras --no-emit-index-url \
    --no-emit-find-links --unsafe-package importer --newline LF "$@" pyproject.toml
}
compile --extra all -o requirements/container.lock
compile --extra all --extra test -o requirements/ci.lock

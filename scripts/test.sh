#!/usr/bin/env bash
# Sets everything up, then runs the whole suite: lint, types, tests (real nginx, qemu-img,
# loop devices when root). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$(id -u)" = 0 ]; then
  bash scripts/container.sh  # the image for the pod contract suite (tests/container)
else
  echo "test: not root: the container contract suite and loop-device tests will be skipped" >&2
fi
.venv/bin/ruff check importer tests bench
.venv/bin/mypy importer
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no tests; that is a failure here" >&2
  exit 1
fi
exit "$rc"

#!/usr/bin/env bash
# Sets everything up, then runs the whole suite: lint, types, tests (real nginx, qemu-img,
# loop devices when root). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
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

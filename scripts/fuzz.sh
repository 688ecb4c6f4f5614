#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers of untrusted bytes (atheris/libFuzzer).
#   bash scripts/fuzz.sh                 every target for 60 s each
#   bash scripts/fuzz.sh headers 3600    one target for an hour
# Targets: headers detection codecs xz_index tar oci termination pinned qcow2_random
# qcow2_stream tables http_framing vmdk_random vmdk_stream ova (tests/fuzz/targets.py).
# The corpus grows in fuzz-corpus/, crashes land in fuzz-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -c 'import atheris' 2>/dev/null || .venv/bin/python -m pip install -q -e '.[fuzz]'  # -e: keep the checkout's code installed
seconds=${2:-60}
targets=${1:-"headers detection codecs xz_index tar oci termination pinned qcow2_random qcow2_stream tables http_framing vmdk_random vmdk_stream ova"}
mkdir -p fuzz-artifacts
for t in $targets; do
  echo "fuzz: $t for ${seconds}s" >&2
  PYTHONPATH=. .venv/bin/python scripts/fuzz.py "$t" -max_total_time="$seconds" \
    -max_len=1048576 -rss_limit_mb=2048 -timeout=20 -artifact_prefix="fuzz-artifacts/$t-" \
    -print_final_stats=1 2>&1 | grep -E "stat::number_of_executed_units|stat::peak_rss|ERROR|crash|Done" || true
done

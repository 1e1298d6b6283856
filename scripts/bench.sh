#!/usr/bin/env bash
# One command per benchmark, from a clean clone: set up .venv and the data (as train.sh
# does), then run scripts/bench_NAME.py (with --data-dir when it takes one) and the rest of
# the arguments, e.g.
#   bash scripts/bench.sh fast --seeds 0 1 2
#   bash scripts/bench.sh parity --config configs/fast.yaml --steps 100
#   bash scripts/bench.sh loader --cold-runs 3
set -euo pipefail
cd "$(dirname "$0")/.."
names=$(ls scripts/bench_*.py | sed 's|scripts/bench_||; s|\.py$||' | tr '\n' ' ')
name=${1:-}
script=scripts/bench_$name.py
if [ -z "$name" ] || [ ! -f "$script" ]; then
  echo "usage: bash scripts/bench.sh NAME [args]; NAME is one of: $names(got '$name')" >&2
  exit 2
fi
shift
bash scripts/setup.sh
source scripts/data_dir.sh
if grep -q -- '"--data-dir"' "$script"; then
  set -- --data-dir "$DATA_DIR" "$@"
fi
exec .venv/bin/python "$script" "$@"

#!/usr/bin/env bash
# One command per benchmark, from a clean clone: set up .venv and the data (as train.sh
# does), then run scripts/bench.py NAME with the rest of the arguments ($DATA_DIR is the
# default of every benchmark's --data-dir), e.g.
#   bash scripts/bench.sh fast --seeds 0 1 2
#   bash scripts/bench.sh parity --config configs/fast.yaml --steps 100
#   bash scripts/bench.sh loader --cold-runs 3
# `bash scripts/bench.sh --help` lists the benchmarks, `bash scripts/bench.sh NAME --help`
# the options of one. Each prints the machine line, its table and the path of its JSON
# record (bench_results/).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
name=${1:-}
if [ "$name" = "-h" ] || [ "$name" = "--help" ]; then
  exec "$PYTHON" scripts/bench.py --help  # the list needs only the standard library
fi
names=$("$PYTHON" -c 'import sys; sys.path.insert(0, "scripts")
from benchmarks import REGISTRY; print(" ".join(REGISTRY))')
if [ -z "$name" ] || [[ " $names " != *" $name "* ]]; then
  echo "usage: bash scripts/bench.sh NAME [args]; NAME is one of: $names (got '$name')" >&2
  exit 2
fi
bash scripts/setup.sh
source scripts/data_dir.sh
export DATA_DIR
exec .venv/bin/python scripts/bench.py "$@"

#!/usr/bin/env bash
# airbench94 side by side on the CPU (issue 22, section 4): for each seed, the port of
# airbench94_muon.py (`bench.py airbench`) and `groupwise fit --config
# configs/airbench94.yaml` (`bench.py airbench_fit`) at the same time, each pinned to its
# own core with one thread, both holding out the same 10,000 training images; each writes
# its JSON record to bench_results/. One pair is about 70 minutes on a 2-core AVX2 CPU.
#   bash scripts/airbench_pair.sh 0 1 2     # seeds 0, 1 and 2 (the default)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(nproc)" -lt 2 ]; then
  echo "airbench_pair.sh runs the two sides on two cores; this machine has $(nproc)" >&2
  exit 2
fi
bash scripts/setup.sh
source scripts/data_dir.sh
export DATA_DIR OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
for seed in "${seeds[@]}"; do
  taskset -c 0 .venv/bin/python scripts/bench.py airbench --seed "$seed" --val-size 10000 &
  port=$!
  taskset -c 1 .venv/bin/python scripts/bench.py airbench_fit --seed "$seed" --val-size 10000 &
  template=$!
  wait "$port"
  wait "$template"
done

#!/usr/bin/env bash
# Set up .venv, then train LeNet-5 on CIFAR-10 with configs/lenet.yaml (a real `fit`).
# Extra arguments go to `groupwise fit`, e.g. --trainer.max_epochs 2.
# Data: see scripts/data_dir.sh ($DATA_DIR, else the shared JPEG copy, else a download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/data_dir.sh
exec .venv/bin/groupwise fit --config configs/lenet.yaml --data.data_dir "$DATA_DIR" "$@"

#!/usr/bin/env bash
# Set up .venv, then train LeNet-5 on CIFAR-10 with configs/lenet.yaml (a real `fit`).
# Extra arguments go to `groupwise fit`, e.g. --trainer.max_epochs 2.
# Data: $DATA_DIR if set; else the JPEG copy of CIFAR-10 in ../shared/data when present
# (machines without network), extracted once into data/; else the official python
# batches, downloaded into data/ with their checksums verified.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
archive=../shared/data/cifar10-jpeg-train.tar.gz
if [ -z "${DATA_DIR:-}" ]; then
  DATA_DIR=data
  if [ -f "$archive" ]; then
    [ -d data/cifar10-jpeg/train ] || { mkdir -p data && tar xzf "$archive" -C data; }
    DATA_DIR=data/cifar10-jpeg
  fi
fi
exec .venv/bin/groupwise fit --config configs/lenet.yaml --data.data_dir "$DATA_DIR" "$@"

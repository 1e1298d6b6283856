# Sourced by train.sh and bench.sh: sets DATA_DIR for `--data.data_dir` / `--data-dir`.
# $DATA_DIR if set; else the JPEG copy of CIFAR-10 in ../shared/data when present
# (machines without network), extracted once into data/; else data/, where the official
# python batches are downloaded with their checksums verified.
archive=../shared/data/cifar10-jpeg-train.tar.gz
if [ -z "${DATA_DIR:-}" ]; then
  DATA_DIR=data
  mkdir -p data  # download: true fetches into a folder that exists, never a new one
  if [ -f "$archive" ]; then
    [ -d data/cifar10-jpeg/train ] || { mkdir -p data && tar xzf "$archive" -C data; }
    DATA_DIR=data/cifar10-jpeg
  fi
fi

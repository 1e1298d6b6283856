"""On one GPU: the airbench94 port and the groupwise recipe side by side, 16-bit, compiled.

``bash scripts/bench.sh gpu [--runs 5] [--autocast bfloat16] [--budget-s 540] [--dry-run]``
runs ``scripts/bench_gpu.py`` (what it runs, times and how long it takes is in its
docstring) with ``--data-dir`` defaulting to ``$DATA_DIR``. ``--dry-run`` runs the same code
paths on the CPU on fabricated data in about half a minute (``tests/test_bench_gpu.py``);
without it the machine needs a CUDA GPU. Its one table is kept in the harness's record.
"""

from __future__ import annotations

import argparse

import bench_gpu

from benchmarks.harness import Record, default_data_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bench_gpu.add_arguments(parser)
    parser.set_defaults(data_dir=str(default_data_dir()))


def run(args: argparse.Namespace, record: Record) -> None:
    record.add("gpu", bench_gpu.run(args, table=record.table))

"""airbench94_muon.py ported to the CPU: one seeded run on the held-out split, or its FLOPs.

``bash scripts/bench.sh airbench [--seed 0] [--val-size 10000] [--count-flops]`` runs
``scripts/airbench94_cpu.py`` (the port: its docstring credits the original, gives its MIT
licence and lists every change) with ``--data-dir`` defaulting to ``$DATA_DIR`` as every
benchmark's does. The run prints airbench's own table and writes the port's JSON record
(``--out``); the harness keeps the same result in its record. CPU only (``gpu`` times the
port on a GPU).
"""

from __future__ import annotations

import argparse

import airbench94_cpu

from benchmarks.harness import Record, default_data_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    airbench94_cpu.add_arguments(parser)
    parser.set_defaults(data_dir=str(default_data_dir()))


def run(args: argparse.Namespace, record: Record) -> None:
    record.add("port", airbench94_cpu.run(args))

"""Peak memory of a short groupwise fit (LeNet-5) on the full CIFAR-10 training set.

Runs ``groupwise fit --config configs/lenet.yaml --data.data_dir DIR --trainer.max_steps N
--trainer.limit_val_batches 0`` (all 50,000 training images loaded into memory from the
decode cache, 45,000 trained on) in a child process, into a temporary directory, and
prints the child's peak resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the
largest of the waited-for children). When the child trains on a GPU it also prints
``torch.cuda.max_memory_allocated`` from inside the child (run as
``python -m benchmarks.memory ARGS``, which is the fit and nothing else).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from benchmarks.harness import REPO, Record, add_data_dir, child_env, require_data


def child(cli_args: Sequence[str]) -> None:
    """The fit itself, in the child process; the GPU peak is only readable from here."""
    import torch

    from groupwise.cli import run

    run(list(cli_args))
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"GPU peak allocated (torch.cuda.max_memory_allocated): {peak:,.0f} MiB")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps of the fit")
    parser.add_argument(
        "--accelerator", default="auto", help="trainer.accelerator (auto: the GPU if any)"
    )


def run(args: argparse.Namespace, record: Record) -> None:
    require_data(args.data_dir)
    with tempfile.TemporaryDirectory() as root:
        cli_args = [
            "fit",
            "--config", str(REPO / "configs" / "lenet.yaml"),
            f"--data.data_dir={args.data_dir}",
            f"--trainer.max_steps={args.steps}",
            "--trainer.limit_val_batches=0",
            f"--trainer.accelerator={args.accelerator}",
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false",
        ]  # fmt: skip
        env = child_env()
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory", *cli_args],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"the fit failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    gpu_lines = [line for line in result.stdout.splitlines() if line.startswith("GPU peak")]
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    record.add("peak_rss_mib", peak_mib)
    record.add("gpu", gpu_lines)
    rows = [["peak resident memory of the fit", f"{peak_mib:,.0f} MiB"]]
    rows += [line.split(": ", 1) for line in gpu_lines]
    record.table(f"groupwise fit {' '.join(cli_args[1:-2])}", ["", "peak"], rows)


if __name__ == "__main__":
    child(sys.argv[1:])

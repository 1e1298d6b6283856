"""Peak memory of a short ``groupwise fit`` on the full CIFAR-10 training set.

Run from the repository root:

    .venv/bin/python scripts/bench_memory.py [--data-dir data/cifar10-jpeg] [--steps 50]

Runs ``groupwise fit --config configs/lenet.yaml --data.data_dir DIR --trainer.max_steps N
--trainer.limit_val_batches 0`` (all 50,000 training images loaded into memory from the
decode cache, 45,000 trained on) in a child process, into a temporary directory, and
prints the child's peak resident set size (``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the
largest of the waited-for children). When the child trains on a GPU it also prints
``torch.cuda.max_memory_allocated`` from inside the child.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(cli_args: list[str]) -> None:
    """The fit itself, in the child process; the GPU peak is only readable from here."""
    import torch

    from groupwise.cli import run

    run(cli_args)
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"GPU peak allocated (torch.cuda.max_memory_allocated): {peak:,.0f} MiB")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "cifar10-jpeg")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps of the fit")
    parser.add_argument(
        "--accelerator", default="auto", help="trainer.accelerator (auto: the GPU if any)"
    )
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        sys.exit(f"no CIFAR-10 at {args.data_dir}; pass --data-dir")
    with tempfile.TemporaryDirectory() as root:
        cli_args = [
            "fit",
            "--config",
            str(REPO / "configs" / "lenet.yaml"),
            f"--data.data_dir={args.data_dir}",
            f"--trainer.max_steps={args.steps}",
            "--trainer.limit_val_batches=0",
            f"--trainer.accelerator={args.accelerator}",
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false",
        ]
        result = subprocess.run(
            [sys.executable, __file__, "--child", *cli_args],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        sys.exit(f"the fit failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    gpu_lines = [line for line in result.stdout.splitlines() if line.startswith("GPU peak")]
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(f"groupwise fit {' '.join(cli_args[1:-2])}")
    print(f"peak resident memory of the fit: {peak_kib / 1024:,.0f} MiB")
    for line in gpu_lines:
        print(line)


if __name__ == "__main__":
    main()

"""Training throughput of two recipes in one process, in rotating order (a ratio that holds
up on a loaded machine better than two whole fits run one after the other).

Run from the repository root:

    .venv/bin/python scripts/bench_recipes.py [--configs configs/fast.yaml configs/fast_muon.yaml]
        [--data-dir data/cifar10-jpeg] [--steps 30] [--repeats 3]

Each recipe trains ``--steps`` optimizer steps through the template's CLI exactly as
``groupwise fit`` builds it (``bench_parity.template_fit``: every default callback, no
validation), each at its own batch size, net, groups and optimizers, after one short
warm-up of each; the order rotates every repeat. Reported per recipe: median images/s and
seconds per step, and the predicted training time of its whole schedule
(``max_epochs`` x steps per epoch x seconds per step, without validation and start-up);
then each recipe's predicted time over the first one's, the median of the per-repeat
ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from bench_parity import template_fit

from groupwise.cli import run

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = 45_000  # the DataModule's training split with val_size 5000


def schedule(config: Path, data_dir: Path) -> tuple[int, int]:
    """(max_epochs, batch_size) of a config."""
    cli = run(["--config", str(config), f"--data.data_dir={data_dir}"], run=False)
    return cli.trainer.max_epochs, cli.datamodule.batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        type=Path,
        nargs="+",
        default=[REPO / "configs" / "fast.yaml", REPO / "configs" / "fast_muon.yaml"],
    )
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "cifar10-jpeg")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=3)
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        sys.exit(f"no CIFAR-10 at {args.data_dir}; pass --data-dir (see the README)")

    plans = {c: schedule(c, args.data_dir) for c in args.configs}
    per_step: dict[Path, list[float]] = {c: [] for c in args.configs}
    with tempfile.TemporaryDirectory() as root, contextlib.redirect_stderr(io.StringIO()):
        for config in args.configs:
            template_fit(config, args.data_dir, args.warmup_steps, root, lean=False)
        for repeat in range(args.repeats):
            shift = repeat % len(args.configs)
            for config in args.configs[shift:] + args.configs[:shift]:
                seconds, _ = template_fit(config, args.data_dir, args.steps, root, lean=False)
                per_step[config].append(seconds / args.steps)
                print(
                    f"repeat {repeat} {config.name}: {seconds / args.steps:.3f} s/step", flush=True
                )

    def predicted(config: Path, seconds: float) -> float:
        epochs, batch = plans[config]
        return epochs * math.ceil(TRAIN_IMAGES / batch) * seconds

    first = args.configs[0]
    print(f"\ntorch threads {torch.get_num_threads()}, {args.steps} steps x {args.repeats} repeats")
    print(f"{'config':>18}  {'epochs':>6}  {'batch':>5}  {'s/step':>7}  {'images/s':>8}  "
          f"{'train s':>8}  {'ratio':>6}")  # fmt: skip
    for config in args.configs:
        epochs, batch = plans[config]
        step = statistics.median(per_step[config])
        ratios = [
            predicted(config, a) / predicted(first, b)
            for a, b in zip(per_step[config], per_step[first], strict=True)
        ]
        print(
            f"{config.name:>18}  {epochs:>6}  {batch:>5}  {step:>7.3f}  {batch / step:>8.0f}  "
            f"{predicted(config, step):>8.0f}  {statistics.median(ratios):>6.3f}"
        )


if __name__ == "__main__":
    main()

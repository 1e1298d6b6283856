"""The overhead of the GroupStats callback on a CPU training run, with and without it.

The same short fit (LeNet-5, the two groups of ``configs/lenet.yaml``, SGD, batches of 128
random CIFAR-shaped tensors held in memory, ``--steps`` optimizer steps, TensorBoard
logger, no checkpointing or validation) runs with and without ``GroupStats(every_n_steps=
--every)``, back to back, alternating which goes first, ``--repeats`` times. Reports the
median of the per-pair time ratios (with / without) and the median seconds of each.
Fabricated data in memory keeps image decoding out of the measurement: what is timed is
the training step, which is where the callback's hooks run.

On a shared, loaded machine the wall-time ratio is noisy; the benchmark therefore also
reports the time spent inside the callback's two hooks as a fraction of the fit's time
(measured in the same runs), which does not depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.harness import Record, Spread, paired_ratios, run_rounds
from groupwise.callbacks.group_stats import GroupStats
from groupwise.classifier import Classifier
from groupwise.nets import LeNet5

GROUPS = [
    {"name": "features", "modules": ["features"]},
    {"name": "classifier", "modules": ["classifier"], "lr_scale": 10.0},
]


class TimedGroupStats(GroupStats):
    """GroupStats that adds up the seconds spent in its hooks."""

    seconds = 0.0

    def on_before_optimizer_step(self, *args, **kwargs) -> None:
        start = time.perf_counter()
        super().on_before_optimizer_step(*args, **kwargs)
        TimedGroupStats.seconds += time.perf_counter() - start

    def on_train_batch_end(self, *args, **kwargs) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args, **kwargs)
        TimedGroupStats.seconds += time.perf_counter() - start


def timed_fit(steps: int, batch_size: int, every: int | None, root: str) -> float:
    """Seconds of ``trainer.fit`` for ``steps`` steps, with GroupStats when ``every``."""
    seed_everything(0, verbose=False)
    images = torch.randn(steps * batch_size, 3, 32, 32)
    labels = torch.randint(0, 10, (steps * batch_size,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size)
    model = Classifier(
        LeNet5(num_classes=10),
        optimizer=functools.partial(torch.optim.SGD, lr=0.005, momentum=0.9, weight_decay=5e-4),
        param_groups=GROUPS,
    )
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=TensorBoardLogger(root),
        callbacks=[TimedGroupStats(every_n_steps=every)] if every else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=50,
    )
    TimedGroupStats.seconds = 0.0
    start = time.perf_counter()
    trainer.fit(model, loader)
    return time.perf_counter() - start


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per fit")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--repeats", type=int, default=7, help="pairs of fits")
    parser.add_argument("--every", type=int, default=50, help="GroupStats every_n_steps")


def run(args: argparse.Namespace, record: Record) -> None:
    def measure(variant: str) -> dict[str, float]:
        every = args.every if variant == "with" else None
        seconds = timed_fit(args.steps, args.batch_size, every, root)
        return {"seconds": seconds, "hook_share": TimedGroupStats.seconds / seconds}

    with tempfile.TemporaryDirectory() as root:
        timed_fit(20, args.batch_size, args.every, root)  # warm-up: imports, allocator
        rounds = run_rounds(
            ["with", "without"],
            args.repeats,
            measure,
            lambda variant, result: f"{variant} {result['seconds']:.3f} s",
        )
    record.add("rounds", rounds.as_json())
    with_s = [r["seconds"] for r in rounds.results["with"]]
    without_s = [r["seconds"] for r in rounds.results["without"]]
    ratios = Spread.of(paired_ratios(with_s, without_s))
    shares = Spread.of([100 * r["hook_share"] for r in rounds.results["with"]])
    record.table(
        f"GroupStats(every_n_steps={args.every}), {args.steps} steps of {args.batch_size} "
        f"images, {args.repeats} pairs",
        ["", "median (min-max)"],
        [
            ["seconds with", Spread.of(with_s).format()],
            ["seconds without", Spread.of(without_s).format()],
            ["time ratio with / without", ratios.format(".4f")],
            ["% of the fit inside GroupStats' hooks", shares.format(".3f")],
        ],
    )

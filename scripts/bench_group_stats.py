"""Measure the overhead of the ``GroupStats`` callback on a CPU training run.

Run from the repository root:

    .venv/bin/python scripts/bench_group_stats.py [--steps 200] [--repeats 7] [--every 50]

The same short fit (LeNet-5, the two groups of ``configs/lenet.yaml``, SGD, batches of 128
random CIFAR-shaped tensors held in memory, ``--steps`` optimizer steps, TensorBoard
logger, no checkpointing or validation) runs with and without ``GroupStats(every_n_steps=
--every)``, back to back, alternating which goes first, ``--repeats`` times. Reports the
median of the per-pair time ratios (with / without) and the median seconds of each.
Fabricated data in memory keeps image decoding out of the measurement: what is timed is
the training step, which is where the callback's hooks run.

On a shared, loaded machine the wall-time ratio is noisy; the script therefore also
reports the time spent inside the callback's two hooks as a fraction of the fit's time
(measured in the same runs), which does not depend on what else the machine is doing.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time

import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per fit")
    parser.add_argument("--batch-size", type=int, default=128, help="images per step")
    parser.add_argument("--repeats", type=int, default=7, help="pairs of fits")
    parser.add_argument("--every", type=int, default=50, help="GroupStats every_n_steps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        timed_fit(20, args.batch_size, args.every, root)  # warm-up: imports, allocator
        with_s, without_s, ratios, hook_shares = [], [], [], []
        for repeat in range(args.repeats):
            order = [args.every, None] if repeat % 2 == 0 else [None, args.every]
            times = {}
            for every in order:
                times[every] = timed_fit(args.steps, args.batch_size, every, root)
                if every:
                    hook_shares.append(TimedGroupStats.seconds / times[every])
            with_s.append(times[args.every])
            without_s.append(times[None])
            ratios.append(times[args.every] / times[None])
            print(f"pair {repeat}: with {times[args.every]:.3f} s, without {times[None]:.3f} s")
    print(
        f"GroupStats(every_n_steps={args.every}), {args.steps} steps of {args.batch_size} "
        f"images, {args.repeats} pairs: median with {statistics.median(with_s):.3f} s, "
        f"median without {statistics.median(without_s):.3f} s, "
        f"median ratio {statistics.median(ratios):.4f} "
        f"(min {min(ratios):.4f}, max {max(ratios):.4f}); time in GroupStats hooks: median "
        f"{100 * statistics.median(hook_shares):.3f}% of the fit; "
        f"torch threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()

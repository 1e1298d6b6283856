"""Compare the template's ``fit`` with a plain PyTorch loop doing the same work, on CPU.

Run from the repository root:

    .venv/bin/python scripts/bench_parity.py [--config configs/fast.yaml]
        [--data-dir data/cifar10-jpeg] [--steps 300] [--repeats 5]

Both sides train what ``--config`` describes (default ``configs/lenet.yaml``) on the real
CIFAR-10 training images held in memory as uint8 (the DataModule's ``train_set``: 45,000
images, 5,000 held out): the same net (same initial weights), parameter groups,
optimizer, lr schedule (stepped as the config says), loss and label smoothing,
channels_last setting, batch size, per-epoch permutation and keyed crop/flip + normalise
on each batch, for ``--steps`` optimizer steps, no validation. The plain loop's objects are
built from the same parsed config (``groupwise.cli.run(args, run=False)``), so the two
cannot drift apart; the loop itself is hand-written torch with no Lightning.

* template: ``GroupwiseCLI`` exactly as ``groupwise fit`` builds it (progress bar,
  LearningRateMonitor, GroupStats, both checkpoints, TensorBoard, GroupPlan,
  FiniteLossGuard), ``--trainer.max_steps``, ``--trainer.limit_val_batches 0``, CPU, into a
  temporary directory; timed from ``on_train_start`` to ``on_train_end`` by a callback
  appended to the trainer (so the epoch-end checkpoint write is included).
* plain: the hand-written loop; timed from the first batch's index to the last step.
* lean template (an attribution variant): the same as template with the progress bar off
  and the GroupStats callback removed.
* bare Lightning (an attribution variant): the same model, data and trainer with no
  callback and no logger at all (only the timer): what Lightning's loop and the
  LightningModule's own per-step work (hooks, closure, train accuracy) cost beside the
  plain loop. ``template - bare`` is what the default callbacks and TensorBoard cost.
* minimal Lightning (an attribution variant): the plain loop's work as the smallest
  LightningModule (``training_step`` = crop/flip, normalise, net, loss;
  ``configure_optimizers`` = the same optimizer and schedule) with a plain DataLoader, in
  a ``lightning.Trainer`` with everything off (no logger, checkpoint, bar or summary; only
  the timer) and Lightning's default profiler: what Lightning's loop costs by itself, the
  floor of any Lightning template.

The five run back to back in one process, in a rotating order, ``--repeats`` times after
one short warm-up of each. The template's first fit sets glibc's allocator to keep freed
memory (``groupwise.host_memory``, process-wide), so the plain loop runs with it too: the
ratio is of the loops, not of the allocators. Reports median images/s (steps * batch
size / seconds) of each and the median of the per-repeat ratios plain / variant, and the
median per-step time each variant adds to the plain loop's (a per-step overhead in ms;
with a small ``--batch-size`` the net's work shrinks and the fixed cost per step shows). The
DataModule's decode cache must exist (run ``groupwise fit`` or ``scripts/bench_loader.py``
once).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import Callback
from torch.nn import functional as F
from torch.utils.data import DataLoader

from groupwise.callbacks.group_stats import GroupStats
from groupwise.cli import run
from groupwise.data.batch_augment import keyed_crop_flip, normalize
from groupwise.data.cifar10 import (
    BatchTensorDataset,
    EpochRandomSampler,
    global_seed,
    pass_through_collate,
)

REPO = Path(__file__).resolve().parents[1]


class TrainTimer(Callback):
    """Seconds from ``on_train_start`` to ``on_train_end``, and how much of that lies
    outside the steps (before the first batch's start, after the last batch's end)."""

    def __init__(self) -> None:
        self.start = self.end = self.first_batch = self.last_batch = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.first_batch:
            self.first_batch = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.last_batch = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()

    @property
    def outside_steps(self) -> float:
        return (self.first_batch - self.start) + (self.end - self.last_batch)


#: ``--data.batch_size`` for every fit when ``--batch-size`` is given (else the config's)
BATCH_SIZE: list[str] = []


def cli_args(config: Path, data_dir: Path, steps: int, root: str, lean: bool) -> list[str]:
    return [
        "--config",
        str(config),
        f"--data.data_dir={data_dir}",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        f"--trainer.default_root_dir={root}",
        f"--trainer.enable_progress_bar={not lean}",
        *BATCH_SIZE,
    ]


def template_fit(
    config: Path, data_dir: Path, steps: int, root: str, lean: bool, bare: bool = False
) -> tuple[float, float]:
    """Seconds of training through the template's CLI, with its default callbacks (none
    with ``bare``, and no logger), and the part of them outside the steps (loader start,
    epoch end: checkpoint, logger)."""
    cli = run(cli_args(config, data_dir, steps, root, lean or bare), run=False)
    trainer = cli.trainer
    if lean:
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, GroupStats)]
    if bare:
        trainer.callbacks, trainer.loggers = [], []
    timer = TrainTimer()
    trainer.callbacks.append(timer)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    if trainer.global_step != steps:
        raise RuntimeError(f"the template ran {trainer.global_step} steps, not {steps}")
    return timer.end - timer.start, timer.outside_steps


def optimization(model, steps: int) -> tuple[torch.optim.Optimizer, Any, str | None]:
    """The config's optimizer, its scheduler (or None) and the scheduler's interval, built
    as the template's fit builds them (a per-step schedule is ``steps`` long)."""
    optimizer = model.build_optimizer()
    if model.scheduler is None:
        return optimizer, None, None
    interval = model.scheduler_interval
    scheduler = model.build_scheduler(optimizer, steps if interval == "step" else None)
    return optimizer, scheduler, interval


def batch_loss(model, net, batch, seed: int, epoch: int, padding: int) -> torch.Tensor:
    """The step's work in both hand-written variants: keyed crop and flip, normalisation,
    channels_last if the config says so, the net and the loss of the config."""
    images, labels, index = batch
    images = normalize(keyed_crop_flip(images, index, seed, epoch, padding))
    if model.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return F.cross_entropy(net(images), labels, label_smoothing=model.label_smoothing)


def plain_fit(
    config: Path, data_dir: Path, steps: int, root: str, images: torch.Tensor, labels: torch.Tensor
) -> float:
    """Seconds of the same training as a hand-written loop, no Lightning: the net, groups,
    optimizer and schedule come from the same config, built but not run by the CLI."""
    cli = run(cli_args(config, data_dir, steps, root, lean=True), run=False)
    model, data = cli.model, cli.datamodule
    seed = global_seed()  # seed_everything of the config, which keys shuffle and crops
    net = model.net
    if model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer, scheduler, interval = optimization(model, steps)
    per_step = interval == "step"
    net.train()
    n, batch_size = len(labels), data.batch_size
    step = epoch = 0
    start = time.perf_counter()
    while step < steps:
        # the permutation of EpochRandomSampler: randperm(n) seeded with seed + epoch
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for first in range(0, n, batch_size):
            index = order[first : first + batch_size]
            # the gather of BatchTensorDataset.__getitems__ (index_select, not images[index])
            batch = images.index_select(0, index), labels.index_select(0, index), index
            loss = batch_loss(model, net, batch, seed, epoch, data.crop_padding)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if per_step:
                scheduler.step()
            step += 1
            if step == steps:
                break
        epoch += 1
        if scheduler is not None and not per_step:
            scheduler.step()
    return time.perf_counter() - start


class MinimalModule(L.LightningModule):
    """The plain loop's step as the smallest LightningModule: no metric, no logging."""

    def __init__(self, cli, steps: int) -> None:
        super().__init__()
        self.net, self.steps, self.source = cli.model.net, steps, cli.model
        self.seed, self.padding = global_seed(), cli.datamodule.crop_padding

    def training_step(self, batch, batch_idx):
        return batch_loss(self.source, self.net, batch, self.seed, self.current_epoch, self.padding)

    def configure_optimizers(self):
        optimizer, scheduler, interval = optimization(self.source, self.steps)
        if scheduler is None:
            return optimizer
        schedule = {"scheduler": scheduler, "interval": interval}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def minimal_fit(
    config: Path, data_dir: Path, steps: int, root: str, images: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float]:
    """Seconds of the same training as :class:`MinimalModule` in a bare ``lightning.Trainer``
    (everything off, Lightning's default profiler), and the part outside the steps."""
    cli = run(cli_args(config, data_dir, steps, root, lean=True), run=False)
    module = MinimalModule(cli, steps)
    if cli.model.channels_last:
        module.net.to(memory_format=torch.channels_last)
    dataset = BatchTensorDataset(images, labels)
    loader = DataLoader(
        dataset,
        batch_size=cli.datamodule.batch_size,
        sampler=EpochRandomSampler(dataset, global_seed()),
        collate_fn=pass_through_collate,
    )
    timer = TrainTimer()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=steps,
        limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step != steps:
        raise RuntimeError(f"minimal Lightning ran {trainer.global_step} steps, not {steps}")
    return timer.end - timer.start, timer.outside_steps


def profile(args: argparse.Namespace, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Print the seconds per step of the functions where a template fit and a plain loop
    spend their time (cProfile, cumulative), side by side."""
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as root, contextlib.ExitStack() as quiet:
        if not args.show_logs:
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        template_fit(args.config, args.data_dir, args.warmup_steps, root, lean=False)  # warm
        stats = {}
        for kind in ("template", "plain"):
            profiler = cProfile.Profile()
            profiler.enable()
            if kind == "template":
                template_fit(args.config, args.data_dir, args.steps, root, lean=False)
            else:
                plain_fit(args.config, args.data_dir, args.steps, root, images, labels)
            profiler.disable()
            stats[kind] = pstats.Stats(profiler)
    # the per-step work besides the net: Lightning's loop, logging, metrics, callbacks, data
    picked = {
        "training_step", "_loss", "backward", "step", "log", "update", "forward",
        "_call_callback_hooks", "on_train_batch_end", "on_before_optimizer_step",
        "on_after_batch_transfer", "keyed_crop_flip", "normalize", "__next__",
        "_call_lightning_module_hook", "advance", "zero_grad", "on_train_batch_start",
    }  # fmt: skip
    for kind, stat in stats.items():
        print(f"\n{kind}: ms per step ({args.steps} steps) of the functions where time goes")
        rows = sorted(stat.stats.items(), key=lambda item: -item[1][3])
        shown = [row for row in rows[:12] if row[0][2] not in picked]
        shown += [row for row in rows if row[0][2] in picked][:40]
        for (path, line, name), (_, calls, _, cumulative, _) in shown:
            if cumulative / args.steps >= 2e-5:
                where = f"{Path(path).name}:{line}({name})"
                print(f"{cumulative / args.steps * 1e3:9.3f} ms  {calls:>8} calls  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "lenet.yaml")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "cifar10-jpeg")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per fit")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the three fits")
    parser.add_argument("--warmup-steps", type=int, default=30, help="steps of the warm-up")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="images per step (default: the config's)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--show-logs", action="store_true", help="let Lightning's output and progress bar through"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead: one template fit and one plain loop under cProfile, where the time goes",
    )
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the CLI below parses its own args, not this script's
    if not args.data_dir.is_dir():
        sys.exit(f"no CIFAR-10 at {args.data_dir}; pass --data-dir")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size:
        BATCH_SIZE.append(f"--data.batch_size={args.batch_size}")
    if not args.show_logs:  # Lightning's info lines (summary, group table) for every fit
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
        logging.getLogger("groupwise").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as root:
        probe = run(cli_args(args.config, args.data_dir, 1, root, True), run=False)
    datamodule, net_name = probe.datamodule, type(probe.model.net).__name__
    batch_size = datamodule.batch_size
    datamodule.prepare_data()
    datamodule.setup("fit")
    images, labels = datamodule.train_set.tensors

    if args.profile:
        profile(args, images, labels)
        return

    kinds = ["template", "plain", "lean", "bare", "minimal"]
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    outside: dict[str, list[float]] = {kind: [] for kind in kinds}

    def fit(kind: str, steps: int, root: str) -> tuple[float, float]:
        if kind == "plain":
            return plain_fit(args.config, args.data_dir, steps, root, images, labels), 0.0
        if kind == "minimal":
            with contextlib.redirect_stderr(io.StringIO()):
                return minimal_fit(args.config, args.data_dir, steps, root, images, labels)
        # the progress bar is drawn (as in a terminal) into a buffer, kept off our table
        with contextlib.ExitStack() as quiet:
            if not args.show_logs:
                quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
                quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
            return template_fit(
                args.config, args.data_dir, steps, root, lean=kind == "lean", bare=kind == "bare"
            )

    with tempfile.TemporaryDirectory() as root:
        for kind in kinds:  # warm-up: imports, allocator, first-call costs
            fit(kind, args.warmup_steps, root)
        for repeat in range(args.repeats):
            shift = repeat % len(kinds)
            order = kinds[shift:] + kinds[:shift]
            for kind in order:
                total, outside_steps = fit(kind, args.steps, root)
                seconds[kind].append(total)
                outside[kind].append(outside_steps)
            print(
                f"round {repeat} ({' -> '.join(order)}): "
                + ", ".join(f"{kind} {seconds[kind][-1]:.2f} s" for kind in kinds),
                flush=True,
            )

    def rate(s: float) -> float:
        return args.steps * batch_size / s

    names = {
        "plain": "plain PyTorch loop",
        "template": "template fit (all default callbacks)",
        "lean": "template fit, no progress bar, no GroupStats",
        "bare": "Lightning alone: no callback, no logger",
        "minimal": "minimal Lightning: 10-line module, bare Trainer",
    }
    print(
        f"\n{args.config.name} ({net_name}), {args.data_dir.name} ({len(labels):,} training"
        f" images), batch {batch_size},"
        f" {args.steps} steps, {args.repeats} rounds, CPU, torch threads "
        f"{torch.get_num_threads()}"
    )
    width = max(len(name) for name in names.values())
    print(
        f"{'':<{width}}  {'median img/s':>12}  {'median ratio vs plain (min-max)':>31}"
        f"  {'ms/step over plain':>18}"
    )
    for kind in ("plain", "template", "lean", "bare", "minimal"):
        images_per_s = statistics.median(rate(s) for s in seconds[kind])
        if kind == "plain":
            print(f"{names[kind]:<{width}}  {images_per_s:>12,.0f}  {'1':>31}  {'0':>18}")
            continue
        pairs = list(zip(seconds[kind], seconds["plain"], strict=True))
        ratios = [p / t for t, p in pairs]
        extra = statistics.median((t - p) / args.steps * 1e3 for t, p in pairs)
        ratio_text = f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        print(f"{names[kind]:<{width}}  {images_per_s:>12,.0f}  {ratio_text:>31}  {extra:>18.3f}")
    print(
        "ratio = plain seconds / variant seconds of the same round (throughput ratio);"
        " ms/step over plain = median over rounds of (variant - plain seconds) / steps"
    )
    for kind in ("template", "lean", "bare", "minimal"):
        print(
            f"{kind}: median {statistics.median(outside[kind]):.3f} s of "
            f"{statistics.median(seconds[kind]):.3f} s outside the steps (before the first "
            "batch starts, after the last ends: epoch-end checkpoint, logger)"
        )


if __name__ == "__main__":
    main()

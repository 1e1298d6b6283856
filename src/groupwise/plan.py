"""The parameter-group plan of a config, without training: groups, and every group's lr by epoch.

The model comes from the config through ``GroupwiseCLI`` with ``run=False`` (no image is
decoded: the DataModule only reads images in ``prepare_data`` / ``setup``), and the learning
rates come from stepping the config's real scheduler, built by ``Classifier.build_scheduler``
as in ``fit``, the way Lightning does: once per epoch, or after every optimizer step for
``scheduler_interval: step``; a group with a schedule of its own (``schedule:`` in its
rule) follows it, stepped after every optimizer step (then the plan is per step). The run's
length (which fills a scheduler length left empty) is Lightning's
``estimated_stepping_batches`` computed from the number of training images (counted in the
files, or CIFAR-10's 50,000 when there is no data yet), the batch size, the number of
devices, ``accumulate_grad_batches``, ``limit_train_batches``, ``max_epochs`` and
``max_steps``. Run from the repository root:

    .venv/bin/python scripts/plan.py --config configs/resnet18.yaml --png docs/lr_plan.png

Any other argument is a LightningCLI argument (``--model.scheduler.init_args.milestones
[1,2]``, a second ``--config``, ...).
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from groupwise.cli import GroupwiseCLI, run
from groupwise.errors import ConfigError
from groupwise.optim.group_schedule import GroupSchedules, scheduled_indices
from groupwise.optim.muon import auto_ns_dtype
from groupwise.optim.param_groups import describe_optimizer, format_table, parameter_names

Schedule = dict[str, list[float]]  # group name -> lr at each epoch (or step), 0-based


def load(args: Sequence[str]) -> GroupwiseCLI:
    """The CLI with the model, data module and trainer of ``args`` built as ``groupwise fit``
    builds them, but not run (``cli.model``, ``cli.trainer.max_epochs``)."""
    with warnings.catch_warnings():
        # The arguments come from this module's own command line: that is intended.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return run(list(args), run=False)


@dataclass
class Setup:
    """What ``fit`` would build: the optimizer, the run's scheduler (or ``None``), the
    scheduler steps per epoch (1 for an epoch plan), the training images an epoch reads,
    the groups' own schedules (``None`` if no group has one; then the plan is per optimizer
    step) and how many plan points apart the run's scheduler steps (``frequency``)."""

    optimizer: Optimizer
    scheduler: LRScheduler | None
    steps_per_epoch: int
    train_images: int | None = None
    group_schedules: GroupSchedules | None = None
    frequency: int = 1


def configure(cli: GroupwiseCLI) -> Setup:
    """The optimizer and schedulers of ``cli``'s model as ``fit`` builds them (a length left
    empty filled with the run's length), without a trainer run or decoded images."""
    model = cli.model
    optimizer = model.build_optimizer()
    own = bool(scheduled_indices(optimizer))
    if model.scheduler is None and not own:
        return Setup(optimizer, None, 1)
    trainer = cli.trainer
    endless = trainer.max_epochs in (None, -1)
    images = per_epoch = None
    per_step = model.scheduler is not None and model.scheduler_interval == "step"
    if per_step or own:  # as Trainer.estimated_stepping_batches
        images = cli.datamodule.num_train_images()
        per_epoch = optimizer_steps_per_epoch(trainer, images, cli.datamodule.batch_size)
    if per_step:
        steps = [] if endless else [per_epoch * trainer.max_epochs]
        steps += [] if trainer.max_steps == -1 else [trainer.max_steps]
        length = min(steps, default=None)
    else:
        length = None if endless else trainer.max_epochs
    scheduler = model.build_scheduler(optimizer, length)
    if isinstance(scheduler, ReduceLROnPlateau):
        raise ConfigError("ReduceLROnPlateau follows a validation metric: it has no plan")
    groups = model.build_group_schedules(optimizer, per_epoch) if own else None
    # with the groups' own schedules the plan is per optimizer step: an epoch scheduler
    # steps once every epoch's steps
    frequency = per_epoch if own and not per_step else 1
    return Setup(optimizer, scheduler, per_epoch or 1, images, groups, frequency)


def optimizer_steps_per_epoch(trainer: Trainer, images: int, batch_size: int) -> int:
    """Lightning's optimizer steps per epoch, from the number of training images: each of
    the ``world_size`` ranks reads ``ceil(images / world_size)`` of them (its
    ``DistributedSampler``), in batches of ``batch_size`` (the last one smaller), limited
    by ``limit_train_batches``; an optimizer step every ``accumulate_grad_batches``."""
    batches = math.ceil(math.ceil(images / trainer.world_size) / batch_size)
    limit = trainer.limit_train_batches
    batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
    return math.ceil(batches / trainer.accumulate_grad_batches)


def lr_schedule(
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    steps: int,
    frequency: int = 1,
    every_step: LRScheduler | None = None,
) -> Schedule:
    """Every group's lr at each of ``steps`` scheduler points (epochs, or optimizer steps for
    a per-step schedule), stepping ``scheduler`` as Lightning does (after point ``i`` when
    ``(i + 1) % frequency == 0``) and ``every_step`` (the groups' own schedules) after every
    point. Changes the optimizer's lrs."""
    if steps < 1:
        raise ConfigError(f"epochs must be at least 1, got {steps}")
    names = [group.get("name", f"pg{i}") for i, group in enumerate(optimizer.param_groups)]
    schedule: Schedule = {name: [] for name in names}
    with warnings.catch_warnings():
        # No training, so no optimizer.step() before scheduler.step(): torch warns about it.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        for step in range(steps):
            if scheduler is not None and step and step % frequency == 0:
                scheduler.step()
            if every_step is not None and step:
                every_step.step()
            for name, group in zip(names, optimizer.param_groups, strict=True):
                schedule[name].append(float(group["lr"]))
    return schedule


def epoch_rows(schedule: Schedule, steps_per_epoch: int) -> list[dict[str, Any]]:
    """One row per epoch of a per-step schedule: ``epoch``, its first ``step`` and each
    group's lr at that step; for ``format_table``."""
    steps = len(next(iter(schedule.values())))
    return [
        {
            "epoch": step // steps_per_epoch,
            "step": step,
            **{n: v[step] for n, v in schedule.items()},
        }
        for step in range(0, steps, steps_per_epoch)
    ]


def lr_rows(schedule: Schedule) -> list[dict[str, Any]]:
    """One row per run of epochs in which no group's lr changes: ``epochs`` ("0-59") and
    each group's lr; for ``format_table``."""
    epochs = len(next(iter(schedule.values())))
    changes = change_epochs(schedule)
    starts = [0, *changes]
    ends = [*(start - 1 for start in changes), epochs - 1]
    return [
        {
            "epochs": f"{start}" if start == end else f"{start}-{end}",
            **{name: lrs[start] for name, lrs in schedule.items()},
        }
        for start, end in zip(starts, ends, strict=True)
    ]


def change_epochs(schedule: Schedule) -> list[int]:
    """The epochs at which some group's lr differs from the epoch before."""
    epochs = len(next(iter(schedule.values())))
    return [
        epoch
        for epoch in range(1, epochs)
        if any(lrs[epoch] != lrs[epoch - 1] for lrs in schedule.values())
    ]


def plot_lr_schedule(
    schedule: Schedule, path: str | Path, title: str = "", steps_per_epoch: int = 1
) -> Path:
    """Save a PNG of each group's lr (log scale) against epoch, changes marked; return path.

    ``schedule`` holds one lr per epoch, or with ``steps_per_epoch > 1`` one per optimizer
    step (drawn as a line over fractional epochs). Groups with the same schedule overlap:
    each is drawn thinner than the ones it covers, so all their colours stay visible.
    """
    points = len(next(iter(schedule.values())))
    epochs = points / steps_per_epoch
    per_step = steps_per_epoch > 1
    changes = [] if per_step else change_epochs(schedule)
    figure = Figure(figsize=(7, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    curves = list(schedule.values())
    for index, (name, lrs) in enumerate(schedule.items()):
        hidden_by = sum(_same(lrs, other) for other in curves[index + 1 :])
        width = 2 + 2 * hidden_by
        if per_step:
            x = [step / steps_per_epoch for step in range(points)]
            axes.plot(x, lrs, linewidth=width, label=name)
        else:
            axes.step(range(points + 1), [*lrs, lrs[-1]], where="post", linewidth=width, label=name)
    for epoch in changes:
        axes.axvline(epoch, color="0.6", linestyle=":", linewidth=1)
    axes.set_yscale("log")
    ticks = {f"{lr:g}": lr for lrs in curves for lr in lrs}  # 0.005 once, not twice
    if len(ticks) <= 8:  # label the lrs themselves rather than powers of ten
        axes.set_yticks(list(ticks.values()), list(ticks))
        axes.yaxis.set_minor_locator(NullLocator())
    axes.set_xlim(0, epochs)
    if not per_step:
        axes.set_xticks(sorted({0, *changes, points}))
    axes.set_xlabel("epoch")
    axes.set_ylabel("learning rate")
    axes.set_title(title or "learning rate per group")
    axes.grid(True, which="major", axis="y", alpha=0.3)
    axes.legend(title="group", fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(math.isclose(x, y, rel_tol=1e-9) for x, y in zip(a, b, strict=True))


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """Hide Lightning's info messages (seed, accelerator, its own copy of the group table)."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def auto_ns_note(optimizer: Any) -> str | None:
    """The line under the group table when a Muon's ``ns_dtype`` is ``auto``: the table
    shows this machine's CPU's choice (the plan builds the net there), which a fit on
    another device may not make (``groupwise.optim.muon.auto_ns_dtype``)."""
    optimizers = getattr(optimizer, "group_optimizers", [optimizer])
    if not any(getattr(child, "ns_dtype", None) == "auto" for child in optimizers):
        return None
    here = str(auto_ns_dtype(torch.device("cpu"))).removeprefix("torch.")
    return (
        f"ns: Muon's ns_dtype auto is {here} on this machine's CPU; a fit decides it on its own"
        " device (bfloat16 on a GPU of compute capability 8.0 or newer)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Print the group table and the lr table of a config; optionally save the lr plot."""
    parser = argparse.ArgumentParser(
        prog="plan.py",
        description="The parameter groups and every group's lr by epoch, without training. "
        "Other arguments go to LightningCLI: --config FILE, --model.* overrides, ...",
        add_help=False,
        allow_abbrev=False,
    )
    parser.add_argument("--epochs", type=int, help="epochs to plan (default trainer.max_epochs)")
    parser.add_argument("--png", type=Path, help="save the lr-per-group plot here")
    options, cli_args = parser.parse_known_args(argv)
    if {"-h", "--help"} & set(cli_args):
        print(parser.format_help())  # then LightningCLI prints its own help and exits
    with quiet_lightning():
        cli = load(cli_args)
        try:
            setup = configure(cli)
        except (ValueError, FileNotFoundError) as error:  # the config's, said in one line
            parser.error(str(error))
    epochs = cli.trainer.max_epochs if options.epochs is None else options.epochs
    if epochs is None or epochs < 0:
        parser.error("trainer.max_epochs is -1 (no limit): give --epochs")
    optimizer, per_epoch = setup.optimizer, setup.steps_per_epoch
    print(f"{type(optimizer).__name__} parameter groups:")
    names = parameter_names(cli.model.net)
    print(format_table(describe_optimizer(optimizer, names)))
    if note := auto_ns_note(optimizer):
        print(note)
    schedule = lr_schedule(
        optimizer, setup.scheduler, epochs * per_epoch, setup.frequency, setup.group_schedules
    )
    if per_epoch > 1:
        print(
            f"\nper-step schedule: {per_epoch:,} optimizer steps per epoch ({setup.train_images:,}"
            f" training images in batches of {cli.datamodule.batch_size} on"
            f" {cli.trainer.world_size} device(s))"
        )
        print(f"learning rate per group at the first step of each of {epochs} epochs (0-based):")
        print(format_table(epoch_rows(schedule, per_epoch)))
    else:
        print(f"\nlearning rate per group over {epochs} epochs (0-based):")
        print(format_table(lr_rows(schedule)))
    if options.png:
        configs = " + ".join(Path(str(c)).name for c in cli.config.get("config") or [])
        title = f"{configs}: learning rate per group" if configs else ""
        print(f"\nwrote {plot_lr_schedule(schedule, options.png, title, per_epoch)}")

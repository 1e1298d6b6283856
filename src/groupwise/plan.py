"""The parameter-group plan of a config, without training: groups, and every group's lr by epoch.

The model comes from the config through ``GroupwiseCLI`` with ``run=False`` (no data is read:
the DataModule only touches files in ``prepare_data`` / ``setup``), and the learning rates
come from stepping the config's real scheduler the way Lightning does, once per epoch.
Run from the repository root:

    .venv/bin/python scripts/plan.py --config configs/resnet18.yaml --png docs/lr_plan.png

Any other argument is a LightningCLI argument (``--model.scheduler.init_args.milestones
[1,2]``, a second ``--config``, ...).
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from groupwise.cli import GroupwiseCLI, run
from groupwise.optim.param_groups import describe_optimizer, format_table

Schedule = dict[str, list[float]]  # group name -> lr at each epoch (0-based)


def load(args: Sequence[str]) -> GroupwiseCLI:
    """The CLI with the model, data module and trainer of ``args`` built as ``groupwise fit``
    builds them, but not run (``cli.model``, ``cli.trainer.max_epochs``)."""
    with warnings.catch_warnings():
        # The arguments come from this module's own command line: that is intended.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return run(list(args), run=False)


def configure(model: LightningModule) -> tuple[Optimizer, LRScheduler | None, int]:
    """The optimizer, epoch scheduler (or ``None``) and scheduler frequency (in epochs) of
    ``model.configure_optimizers()``; needs no trainer."""
    config = model.configure_optimizers()
    if isinstance(config, Optimizer):
        return config, None, 1
    scheduler = config.get("lr_scheduler")
    frequency = 1
    if isinstance(scheduler, Mapping):
        if scheduler.get("interval", "epoch") != "epoch":
            raise ValueError(
                f"the scheduler steps every {scheduler['interval']!r}; only an epoch "
                "schedule can be planned without the data"
            )
        frequency = scheduler.get("frequency", 1)
        scheduler = scheduler["scheduler"]
    if isinstance(scheduler, ReduceLROnPlateau):
        raise ValueError("ReduceLROnPlateau follows a validation metric: it has no plan")
    return config["optimizer"], scheduler, frequency


def lr_schedule(
    optimizer: Optimizer, scheduler: LRScheduler | None, epochs: int, frequency: int = 1
) -> Schedule:
    """Every group's lr at each of ``epochs`` epochs, stepping ``scheduler`` as Lightning does
    (after epoch ``e`` when ``(e + 1) % frequency == 0``). Changes the optimizer's lrs."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    names = [group.get("name", f"pg{i}") for i, group in enumerate(optimizer.param_groups)]
    schedule: Schedule = {name: [] for name in names}
    with warnings.catch_warnings():
        # No training, so no optimizer.step() before scheduler.step(): torch warns about it.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        for epoch in range(epochs):
            if scheduler is not None and epoch and epoch % frequency == 0:
                scheduler.step()
            for name, group in zip(names, optimizer.param_groups, strict=True):
                schedule[name].append(float(group["lr"]))
    return schedule


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


def plot_lr_schedule(schedule: Schedule, path: str | Path, title: str = "") -> Path:
    """Save a PNG of each group's lr (log scale) against epoch, changes marked; return path.

    Groups with the same schedule overlap: each is drawn thinner than the ones it covers,
    so all their colours stay visible.
    """
    epochs = len(next(iter(schedule.values())))
    changes = change_epochs(schedule)
    figure = Figure(figsize=(7, 3.8), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    curves = list(schedule.values())
    for index, (name, lrs) in enumerate(schedule.items()):
        hidden_by = sum(_same(lrs, other) for other in curves[index + 1 :])
        width = 2 + 2 * hidden_by
        axes.step(range(epochs + 1), [*lrs, lrs[-1]], where="post", linewidth=width, label=name)
    for epoch in changes:
        axes.axvline(epoch, color="0.6", linestyle=":", linewidth=1)
    axes.set_yscale("log")
    ticks = {f"{lr:g}": lr for lrs in curves for lr in lrs}  # 0.005 once, not twice
    if len(ticks) <= 8:  # label the lrs themselves rather than powers of ten
        axes.set_yticks(list(ticks.values()), list(ticks))
        axes.yaxis.set_minor_locator(NullLocator())
    axes.set_xlim(0, epochs)
    axes.set_xticks(sorted({0, *changes, epochs}))
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
        optimizer, scheduler, frequency = configure(cli.model)
    epochs = cli.trainer.max_epochs if options.epochs is None else options.epochs
    if epochs < 0:
        parser.error("trainer.max_epochs is -1 (no limit): give --epochs")
    print(f"{type(optimizer).__name__} parameter groups:")
    # initial_lr is the scheduler's bookkeeping, not an option of the group.
    print(format_table(describe_optimizer(optimizer, hide=("initial_lr",))))
    schedule = lr_schedule(optimizer, scheduler, epochs, frequency)
    print(f"\nlearning rate per group over {epochs} epochs (0-based):")
    print(format_table(lr_rows(schedule)))
    if options.png:
        configs = " + ".join(Path(str(c)).name for c in cli.config.get("config") or [])
        title = f"{configs}: learning rate per group" if configs else ""
        print(f"\nwrote {plot_lr_schedule(schedule, options.png, title)}")

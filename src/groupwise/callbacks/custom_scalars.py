"""TensorBoard's "Custom Scalars" tab: one chart per quantity, one line per group.

What the loggers lack: TensorBoard's Scalars tab draws every tag as its own card, so each
group's lr (``lr-SGD/features``, ``lr-SGD/classifier``, ...) and each group's gradient norm
is a separate plot and nothing shows the groups side by side. ``SummaryWriter``'s
``add_custom_scalars`` writes a layout for the Custom Scalars tab; ``CustomScalars`` writes
one at fit start, built from the run's real tags:

- ``learning rate``: the tags Lightning's ``LearningRateMonitor`` logs (its ``lrs`` keys,
  fixed in its ``on_train_start``: ``lr-<Optimizer>/<group>``, the optimizer of that
  group);
- ``frozen (1: no update)``: the marks ``FreezeGroups`` logs for each group it freezes
  (``groups/<group>/frozen``), since the lr chart shows a frozen group's scheduled lr;
- ``gradient norm``, ``parameter norm``, ``update ratio``: the tags ``GroupStats`` logs for
  each optimizer group (``GroupStats.tag``: ``groups/<group>/grad_norm``, ...).

A chart lists its tags as regular expressions (TensorBoard matches them from the start of
a tag name); each is the escaped tag anchored at the end, so it draws exactly that tag
(``features`` does not also draw ``features.no_decay``). A chart with no tag (that callback
is absent) is left out. Written from global rank zero to every ``TensorBoardLogger``, in
``on_train_epoch_start`` of the first epoch, so after every callback's ``on_train_start``
(where ``LearningRateMonitor`` names its tags).
"""

from __future__ import annotations

import re
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger

from groupwise.callbacks.finetune import FreezeGroups
from groupwise.callbacks.group_stats import GroupStats
from groupwise.optim.param_groups import group_name

CATEGORY = "parameter groups"
FROZEN_TITLE = "frozen (1: no update)"
STAT_TITLES = {
    "grad_norm": "gradient norm",
    "param_norm": "parameter norm",
    "update_ratio": "update ratio",
}


def exactly(tag: str) -> str:
    """A TensorBoard custom-scalars tag regex that matches ``tag`` and nothing else."""
    return re.escape(tag) + "$"


def layout(trainer: Trainer) -> dict[str, dict[str, list[Any]]]:
    """``add_custom_scalars``' layout for the tags the trainer's callbacks log."""
    charts: dict[str, list[str]] = {"learning rate": [], FROZEN_TITLE: []}
    for callback in trainer.callbacks:
        if isinstance(callback, LearningRateMonitor):
            charts["learning rate"] += list(callback.lrs)
        if isinstance(callback, FreezeGroups):
            marked = callback.marked_groups(trainer.optimizers)
            charts[FROZEN_TITLE] += [callback.tag(name) for name, _, _ in marked]
    groups = [
        group_name(group, index)
        for optimizer in trainer.optimizers
        for index, group in enumerate(optimizer.param_groups)
    ]
    for stat, title in STAT_TITLES.items():
        charts[title] = [
            callback.tag(group, stat)
            for callback in trainer.callbacks
            if isinstance(callback, GroupStats)
            for group in groups
        ]
    return {
        CATEGORY: {
            title: ["Multiline", [exactly(tag) for tag in tags]]
            for title, tags in charts.items()
            if tags
        }
    }


class CustomScalars(Callback):
    """Write the Custom Scalars layout (one chart per quantity, a line per group)."""

    def __init__(self) -> None:
        self.layout: dict[str, Any] | None = None  # the layout written, for tools and tests

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.layout = None  # once per fit, i.e. per run directory

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.layout is not None or not trainer.is_global_zero:
            return
        self.layout = layout(trainer)
        if not self.layout[CATEGORY]:
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_custom_scalars(self.layout)

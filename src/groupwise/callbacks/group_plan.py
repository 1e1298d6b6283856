"""The run's parameter-group table, saved next to its logs.

What Lightning lacks: the group table (``param_groups.describe`` + ``format_table``, the
same table ``Classifier.configure_optimizers`` prints) goes to the console only, and is
lost with it. ``GroupPlan`` writes it, once at fit start (the optimizers exist by then),
from global rank zero, to:

- ``<trainer.log_dir>/param_groups.txt``: the fixed-width text table;
- TensorBoard's Text tab, tag ``param_groups``: the same rows as a Markdown table, one per
  optimizer (``param_groups/<i>`` when there are several), on every ``TensorBoardLogger``.
  In the event file the tag reads ``param_groups/text_summary`` (``SummaryWriter.add_text``
  appends that), a tensor event holding the Markdown string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from groupwise.optim.param_groups import _cell, describe, format_table, parameter_names

FILENAME = "param_groups.txt"
TAG = "param_groups"


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of equal keys as a Markdown table (what TensorBoard's Text tab renders)."""
    if not rows:
        return "(no groups)"
    columns = list(rows[0])
    lines = [columns, ["---"] * len(columns), *([_cell(row[c]) for c in columns] for row in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


class GroupPlan(Callback):
    """Save each optimizer's group table to ``param_groups.txt`` and TensorBoard text."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank must ask: under DDP ``trainer.log_dir`` is a broadcast from rank 0, so
        # reading it in rank-zero-only code deadlocks (rank 0 waits in the broadcast while
        # the others wait in the next barrier).
        log_dir = trainer.log_dir
        if not trainer.is_global_zero:
            return
        tables, markdown = [], []
        # names relative to the module the groups were built on (the Classifier's ``net``),
        # so that a tied weight is listed under the names its rules see
        names = parameter_names(getattr(pl_module, "net", pl_module))
        for optimizer in trainer.optimizers:
            rows = describe(optimizer.param_groups, optimizer.defaults, names)
            tables.append(format_table(rows))
            markdown.append(markdown_table(rows))
        if not tables:
            return
        if log_dir is not None:
            path = Path(log_dir) / FILENAME
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n\n".join(tables) + "\n")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for index, text in enumerate(markdown):
                    tag = TAG if len(markdown) == 1 else f"{TAG}/{index}"
                    logger.experiment.add_text(tag, text, global_step=trainer.global_step)

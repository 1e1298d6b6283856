"""The predictions of ``predict`` as a CSV file in the run directory.

What Lightning lacks: ``predict`` keeps the model's outputs in memory and writes nothing;
its ``BasePredictionWriter`` leaves what to write, and where, to the user. ``PredictionWriter``
writes ``<run directory>/predictions.csv`` (``default_root_dir`` without a logger): one row
per image, in the order of the predict dataset (the DataModule's files' order), with the
columns that say which image it is (the DataModule's ``predict_columns``: ``image``, its
path, for files; ``index`` and the true ``label`` for a split; else ``index``, the dataset
index), then ``predicted`` and ``probability``, then ``class_2``, ``probability_2``, ... up to
``top_k``: the most probable classes, by name (the DataModule's ``classes``), and their
probabilities (the model's ``predict_step`` output, one row of class probabilities per
image). At the end it prints where the file went, as ``RunSummary`` does for the other
subcommands (also into ``<run directory>/summary.txt``).

Under DDP each rank predicts a share of the images (Lightning's
``UnrepeatedDistributedSampler`` hands them out interleaved); every rank's rows are
gathered on rank 0 with their dataset indices (``strategy.all_gather``, padded to the
longest rank's share) and written once, in order, an index predicted twice (by a sampler
that pads, as ``DistributedSampler`` does) only once. Under ``fast_dev_run`` nothing is
written.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info

from groupwise.callbacks.run_summary import FILENAME as SUMMARY_FILENAME
from groupwise.callbacks.run_summary import duration, shown
from groupwise.errors import ConfigError


def in_input_order(indices: torch.Tensor, *columns: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``indices`` (dataset indices of the rows, from any ranks in any order) sorted, each
    index once, and each of ``columns`` (rows in the order of ``indices``) likewise."""
    order = torch.argsort(indices, stable=True)
    ordered = indices[order]
    first = torch.ones(len(order), dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    order = order[first]
    return indices[order], *(column[order] for column in columns)


def gather_rows(trainer: Trainer, device: torch.device, *rows: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``rows`` (tensors of this rank's rows), rank by rank, on the CPU.
    ``strategy.all_gather`` needs the same shape on every rank: each is padded to the
    longest rank's count and trimmed after."""
    if trainer.world_size == 1:
        return [r.cpu() for r in rows]
    strategy = trainer.strategy
    count = torch.tensor([len(rows[0])], device=device)
    counts = strategy.all_gather(count).flatten().tolist()
    longest = max(counts)
    gathered = []
    for row in rows:
        padded = torch.zeros((longest, *row.shape[1:]), dtype=row.dtype, device=device)
        padded[: len(row)] = row
        every = strategy.all_gather(padded)  # (world_size, longest, ...)
        gathered.append(torch.cat([every[r, :n] for r, n in enumerate(counts)]).cpu())
    return gathered


def header(id_columns: Sequence[str], k: int) -> list[str]:
    """The CSV header: the image's columns, then the ``k`` most probable classes."""
    ranked = [f"{name}_{rank}" for rank in range(2, k + 1) for name in ("class", "probability")]
    return [*id_columns, "predicted", "probability", *ranked]


def csv_rows(
    indices: torch.Tensor,
    classes: torch.Tensor,
    probabilities: torch.Tensor,
    names: Sequence[str],
    id_columns: Mapping[str, Sequence[str]],
) -> list[list[str]]:
    """One row per dataset index: its ``id_columns`` values, then each of its top classes
    (``classes``, by ``names``) with its probability."""
    rows = []
    for index, top, values in zip(
        indices.tolist(), classes.tolist(), probabilities.tolist(), strict=True
    ):
        row = [column[index] for column in id_columns.values()]
        for label, value in zip(top, values, strict=True):
            row += [names[label], f"{value:.6f}"]
        rows.append(row)
    return rows


def write_csv(path: Path, head: list[str], rows: list[list[str]]) -> None:
    """Write atomically: a temporary file beside ``path``, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(head)
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class PredictionWriter(BasePredictionWriter):
    """Write ``predict``'s class probabilities as ``predictions.csv`` (see the module).

    Args:
        top_k: How many of the most probable classes each row names (at most the number of
            classes).
        filename: The file's name in the run directory.
    """

    def __init__(self, top_k: int = 3, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="batch")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(
                f"predictions.top_k must be an int >= 1 (classes per row), got {top_k!r}"
            )
        if not filename or Path(filename).name != filename:
            raise ConfigError(
                f"predictions.filename must be a file name (it goes into the run directory),"
                f" got {filename!r}"
            )
        self.top_k = top_k
        self.filename = filename
        self.path: Path | None = None  # the file written last, for tools and tests
        self._start = time.monotonic()
        self._names: list[str] = []
        self._rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()
        self._rows = []
        names = getattr(trainer.datamodule, "classes", None)
        if names is None and hasattr(pl_module, "num_classes"):
            names = [str(label) for label in range(pl_module.num_classes)]
        self._names = list(names or [])

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        probabilities = prediction.detach()
        if self._names and probabilities.shape[-1] != len(self._names):
            raise ConfigError(
                f"the model predicts {probabilities.shape[-1]} classes and the data has"
                f" {len(self._names)} ({', '.join(self._names)}): give the data.data_dir the"
                " model was trained on, whose classes name the predictions"
            )
        values, classes = probabilities.topk(self._k(probabilities.shape[-1]), dim=-1)
        if batch_indices:
            indices = torch.as_tensor(list(batch_indices), dtype=torch.int64)
        else:  # not a DataLoader: Lightning cannot tell the indices; in order, one process
            done = sum(len(i) for i, _, _ in self._rows)
            indices = torch.arange(done, done + len(values))
        self._rows.append((indices, classes.cpu(), values.float().cpu()))

    def _k(self, width: int | None = None) -> int:
        return min(self.top_k, width or len(self._names) or self.top_k)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        k = self._k()
        indices = torch.cat([torch.zeros(0, dtype=torch.int64), *(i for i, _, _ in self._rows)])
        classes = torch.cat([torch.zeros(0, k, dtype=torch.int64), *(c for _, c, _ in self._rows)])
        values = torch.cat([torch.zeros(0, k), *(v for _, _, v in self._rows)])
        self._rows = []
        device = pl_module.device
        rows = (indices.to(device), classes.to(device), values.to(device))
        gathered = gather_rows(trainer, device, *rows)
        if trainer.fast_dev_run:
            return
        run_dir = trainer.log_dir if trainer.loggers else None  # every rank: a broadcast
        if not trainer.is_global_zero:
            return
        indices, classes, values = in_input_order(*gathered)
        columns = getattr(trainer.datamodule, "predict_columns", None) or {}
        if not columns:  # another DataModule: the dataset index says which image
            columns = {
                "index": [str(i) for i in range(int(indices.max()) + 1 if len(indices) else 0)]
            }
        names = self._names or [
            str(label) for label in range(int(classes.max()) + 1 if classes.numel() else 0)
        ]
        folder = Path(run_dir) if run_dir else Path(trainer.default_root_dir)
        self.path = folder / self.filename
        write_csv(
            self.path, header(list(columns), k), csv_rows(indices, classes, values, names, columns)
        )
        self._report(trainer, run_dir, len(indices))

    def _report(self, trainer: Trainer, run_dir: str | None, count: int) -> None:
        """Print where the predictions went (and into ``summary.txt`` of the run)."""
        assert self.path is not None
        rows = [
            ("run directory", shown(run_dir) if run_dir else "none (no logger)"),
            ("checkpoint", shown(trainer.ckpt_path) if trainer.ckpt_path else "none"),
            ("predictions", f"{shown(self.path)} ({count} images)"),
        ]
        width = max(len(label) for label, _ in rows)
        body = [f"{label.ljust(width)}  {text}" for label, text in rows]
        seconds = time.monotonic() - self._start
        text = "\n".join([f"predict done in {duration(seconds)}", *body]) + "\n"
        if run_dir:
            (Path(run_dir) / SUMMARY_FILENAME).write_text(text)
        rank_zero_info(text.rstrip("\n"))

"""Where a run went: a short summary at the end of ``fit``, ``validate`` and ``test``.

What Lightning lacks: a ``fit`` ends with the last progress-bar line; where the logs and
checkpoints went, which epoch was best and how to look at it are left to the user to dig
out. ``RunSummary`` prints, from global rank zero, at the end of each of those stages::

    fit done in 1 min 23 s
    run directory  lightning_logs/version_0
    best val/acc   0.6512 at epoch 17: lightning_logs/version_0/checkpoints/epoch017-acc0.6512.ckpt
    last.ckpt      lightning_logs/version_0/checkpoints/last.ckpt
    TensorBoard    tensorboard --logdir lightning_logs/version_0

(``validate`` and ``test``: the checkpoint evaluated and the stage's logged metrics in
place of the best and last checkpoints), and writes the same text to
``<run directory>/summary.txt`` (a ``test`` after a ``fit`` in the same process and run
directory adds its summary to the file). The best checkpoint is the ``ModelCheckpoint`` with a
monitored metric (its ``best_model_path`` and ``best_model_score``); its epoch is read
from the checkpoint file (``"epoch"``, counted from 0 as in the file names and the
progress bar; memory-mapped, so a large checkpoint is not read whole). ``last.ckpt`` is
the file of a ``ModelCheckpoint`` without a monitor (the CLI's ``last_checkpoint``) or its
``last_model_path``. Paths are relative to the working directory when they lie under it.
The wall time runs from the stage's ``setup`` to its end. Under ``fast_dev_run`` (no
logging, no checkpoints) nothing is written. ``groupwise lr_find`` leaves this callback out
of its sweep (a fit inside it) and ends with a summary of its own in the same form
(``summary_text``; see ``groupwise.trainer``).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

FILENAME = "summary.txt"


def shown(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory if it lies under it, else absolute."""
    absolute = Path(path).absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def duration(seconds: float) -> str:
    """``42.0 s``, ``1 min 23 s``, ``2 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def checkpoint_epoch(path: str) -> int | None:
    """The ``epoch`` stored in a Lightning checkpoint, or ``None`` if it cannot be read."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip checkpoint (mmap needs one), unreadable, ...
        return None
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    return epoch if isinstance(epoch, int) else None


def tensorboard_command(run_dir: str) -> str:
    """The command that opens TensorBoard on ``run_dir`` (the environment's script when
    ``tensorboard`` is not on the PATH)."""
    script = "tensorboard"
    if shutil.which(script) is None:
        beside = Path(sys.executable).with_name(script)
        script = shown(beside) if beside.is_file() else script
    return f"{script} --logdir {shown(run_dir)}"


def fit_lines(trainer: Trainer) -> list[tuple[str, str]]:
    """The best and the last checkpoint of a fit, as (label, text) rows."""
    rows = []
    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    monitored = [c for c in callbacks if c.monitor and c.save_top_k != 0]  # 0: turned off
    if monitored:
        best = monitored[0]
        if best.best_model_path and best.best_model_score is not None:
            epoch = checkpoint_epoch(best.best_model_path)
            at = f" at epoch {epoch}" if epoch is not None else ""
            text = f"{float(best.best_model_score):.4f}{at}: {shown(best.best_model_path)}"
        else:
            text = "no checkpoint saved"
        rows.append((f"best {best.monitor}", text))
    last = [c.last_model_path for c in callbacks if c.last_model_path]
    last += [c.best_model_path for c in callbacks if not c.monitor and c.best_model_path]
    if last:
        rows.append((Path(last[0]).name, shown(last[0])))
    return rows


def evaluation_lines(trainer: Trainer, stage: str) -> list[tuple[str, str]]:
    """The checkpoint evaluated and the stage's logged metrics (``val/...``, ``test/...``)."""
    prefix = "val/" if stage == "validate" else f"{stage}/"
    rows = [("checkpoint", shown(trainer.ckpt_path) if trainer.ckpt_path else "none")]
    for name, value in sorted(trainer.callback_metrics.items()):
        if name.startswith(prefix):
            rows.append((name, f"{float(value):.4f}"))
    return rows


def summary(trainer: Trainer, stage: str, seconds: float, run_dir: str | None) -> str:
    """The summary text of a finished ``stage`` (``fit``, ``validate`` or ``test``)."""
    rows = fit_lines(trainer) if stage == "fit" else evaluation_lines(trainer, stage)
    return summary_text(stage, seconds, run_dir, rows)


def summary_text(
    stage: str, seconds: float, run_dir: str | None, rows: list[tuple[str, str]]
) -> str:
    """``<stage> done in <time>``, then the run directory, ``rows`` (label, text) and the
    TensorBoard command, labels aligned."""
    rows = [("run directory", shown(run_dir) if run_dir else "none (no logger)"), *rows]
    if run_dir:
        rows.append(("TensorBoard", tensorboard_command(run_dir)))
    width = max(len(label) for label, _ in rows)
    body = [f"{label.ljust(width)}  {text}" for label, text in rows]
    return "\n".join([f"{stage} done in {duration(seconds)}", *body]) + "\n"


class RunSummary(Callback):
    """Print where the run went at the end of ``fit``, ``validate`` and ``test`` and write
    it to ``<run directory>/summary.txt`` (see the module docstring)."""

    def __init__(self) -> None:
        self._start: float | None = None
        self.text: str | None = None  # the latest summary, for tools and tests
        self._written: set[Path] = set()

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._start = time.monotonic()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, "fit")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":  # not the validation loops inside fit
            self._finish(trainer, "validate")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish(trainer, "test")

    def _finish(self, trainer: Trainer, stage: str) -> None:
        if trainer.fast_dev_run:
            return
        log_dir = trainer.log_dir if trainer.loggers else None  # every rank: a broadcast
        if not trainer.is_global_zero:
            return
        seconds = time.monotonic() - (self._start or time.monotonic())
        self.text = summary(trainer, stage, seconds, log_dir)
        if log_dir is not None:
            path = Path(log_dir) / FILENAME
            path.parent.mkdir(parents=True, exist_ok=True)
            # a test after a fit in the same process and run directory adds to its summary
            with path.open("a" if path in self._written else "w") as file:
                file.write(self.text)
            self._written.add(path)
        rank_zero_info(self.text.rstrip("\n"))

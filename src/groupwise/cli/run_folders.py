"""What a run that fails before its first batch made, removed: the run directories of the
trainer's loggers as they were before it ran (``RunFolders``), and whether a batch of the
run's own has begun (``FirstBatch``, a callback the CLI adds to every trainer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback


class FirstBatch(Callback):
    """Whether the run has begun a batch of its own (the sanity check's do not count)."""

    def __init__(self) -> None:
        self.started = False

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.started = True

    def on_validation_batch_start(self, trainer: Trainer, *args: Any) -> None:
        self.started = self.started or not trainer.sanity_checking

    on_test_batch_start = on_predict_batch_start = on_train_batch_start


class RunFolders:
    """The run directories of a trainer's loggers, as they were before it ran, so that a run
    that fails before its first batch can remove exactly what it created there. Lightning
    makes the run directory, writes ``config.yaml`` (``SaveConfigCallback``) and starts the
    event file in ``Trainer._run``'s setup: before a resume's checks run (when the checkpoint
    is restored) and before ``predict`` sets up its data; it removes nothing on a failure."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.folders = [Path(d).absolute() for d in logger_dirs(trainer)]
        self.before = {f: set(f.rglob("*")) if f.is_dir() else set() for f in self.folders}
        # the nearest folder on each one's way that exists: it and what is above it stay
        self.kept = {f: next(p for p in [f, *f.parents] if p.exists()) for f in self.folders}

    def started(self) -> bool:
        return any(isinstance(c, FirstBatch) and c.started for c in self.trainer.callbacks)

    def remove_if_not_started(self) -> None:
        """Remove what appeared in the run directories (files, then emptied folders, then
        the run directories and their parents that did not exist), unless a batch ran."""
        if self.started() or not self.trainer.is_global_zero:
            return
        for folder in self.folders:
            new = sorted(set(folder.rglob("*")) - self.before[folder], key=lambda p: -len(p.parts))
            for path in new:
                if path.is_symlink() or path.is_file():
                    path.unlink()
                elif path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
            remove_empty_folders(folder, self.kept[folder])


def logger_dirs(trainer: Trainer) -> list[str]:
    """The local folders the trainer's loggers write into (``log_dir``; none for loggers
    without one, such as Wandb or MLflow)."""
    dirs = []
    for logger in trainer.loggers:
        try:
            log_dir = getattr(logger, "log_dir", None)
        except Exception:  # a logger that cannot say yet: nothing of it is removed
            continue
        if isinstance(log_dir, str) and "://" not in log_dir:
            dirs.append(log_dir)
    return dirs


def remove_empty_folders(folder: Path, kept: Path) -> None:
    """``folder`` and its parents below ``kept``, each only while it is an empty folder."""
    for path in [folder, *folder.parents]:
        if path == kept or not path.is_dir() or any(path.iterdir()):
            return
        path.rmdir()

"""Callbacks that kill (SIGKILL) or signal (SIGTERM, SIGUSR1) a sweep's worker once, added to
a sweep's fits through `--trainer.callbacks+=...` (so the retried trial, whose config is the
same, runs on), and one that logs which process took which step."""

import os
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class KillOnceAtStep(Callback):
    """SIGKILL the process after global step ``step``, unless ``stamp`` exists (it is
    written just before: the retried trial is not killed again)."""

    def __init__(self, step: int, stamp: str) -> None:
        self.step = step
        self.stamp = Path(stamp)

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step and not self.stamp.exists():
            self.stamp.write_text(str(trainer.global_step))
            os.kill(os.getpid(), signal.SIGKILL)


class SignalOnceAtStep(Callback):
    """Send this process ``signal`` (a name) as the training batch of global step ``step``
    starts, unless ``stamp`` exists (written just before: neither the retried trial nor a
    fit of the trial's config is signalled again)."""

    def __init__(self, signal: str, step: int, stamp: str) -> None:
        self.signum = globals()["signal"].Signals[signal]
        self.step = step
        self.stamp = Path(stamp)

    def on_train_batch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step and not self.stamp.exists():
            self.stamp.write_text(str(trainer.global_step))
            os.kill(os.getpid(), self.signum)


class StepLog(Callback):
    """Append ``<pid> <default_root_dir> <global step>`` to ``path`` as each training batch
    starts: which process took which optimizer step (0-based) of which run."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        with self.path.open("a") as log:
            log.write(f"{os.getpid()} {trainer.default_root_dir} {trainer.global_step}\n")

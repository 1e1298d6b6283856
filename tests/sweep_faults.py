"""A callback that kills a sweep's worker once, added to a sweep's fits through
`--trainer.callbacks+=...` (so the retried trial, whose config is the same, runs on)."""

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

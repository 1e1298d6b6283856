"""Stop training at the first NaN or infinite loss, before a checkpoint can record it.

What Lightning lacks: ``Trainer(detect_anomaly=True)`` is a slow autograd mode, and
``EarlyStopping(check_finite=True)`` looks only at a monitored metric after validation,
by which time ``last.ckpt`` may already hold the diverged weights. This callback checks
the training loss of every step and raises; no checkpoint is written after a bad loss,
so the last good one stays on disk.

Reading a GPU loss on the host waits for the GPU, so on accelerators the check stays on
the device (a flag and the index of the first bad step, no host read) and the host reads
it only every ``check_every_n_steps`` steps, before validation, at the end of each epoch
and of training, and before any checkpoint is written. On the CPU a host read costs
nothing and every step is read at once.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from groupwise.errors import ConfigError, UserError


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(Callback):
    """Raise ``NonFiniteLossError`` naming the first bad step and every group's lr then.

    Args:
        check_every_n_steps: steps between host reads of the device-side check; ``None``
            reads every step on the CPU and every 50 steps on an accelerator.
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ConfigError(
                f"check_every_n_steps must be a positive integer or None, got {check_every_n_steps}"
            )
        self.check_every_n_steps = check_every_n_steps
        # (epoch, batch_idx, global_step, lrs) of each step since the last host read
        self._steps: list[tuple[int, int, int, list[tuple[str, float]]]] = []
        self._first_bad: torch.Tensor | None = None  # index into _steps, -1 while all finite
        self._bad_loss: torch.Tensor | None = None

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach().float().sum()
        step = (trainer.current_epoch, batch_idx, trainer.global_step, _lrs(trainer))
        every = self.check_every_n_steps or (1 if loss.device.type == "cpu" else 50)
        if every == 1:  # read now: the device-side flag would only add work
            if not bool(torch.isfinite(loss)):
                self._raise(trainer, step, loss.item())
            return
        # the lrs of every pending step: a per-step schedule changes them between reads
        index = len(self._steps)
        self._steps.append(step)
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._bad_loss = torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss) & (self._first_bad < 0)  # device ops: no host read
        self._first_bad = torch.where(first, index, self._first_bad)
        self._bad_loss = torch.where(first, loss, self._bad_loss)
        if len(self._steps) >= every:
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.check(trainer)  # raising here aborts the save before anything is written

    def check(self, trainer: L.Trainer) -> None:
        """Read the device-side flag (one host read); raise if a step's loss was bad."""
        if not self._steps:
            return
        first = int(self._first_bad)
        if first < 0:
            self._steps.clear()
            return
        self._raise(trainer, self._steps[first], self._bad_loss.item())

    def _raise(self, trainer: L.Trainer, step: tuple, loss: float) -> None:
        epoch, batch_idx, global_step, lrs = step
        saved = [cb.last_model_path or cb.best_model_path for cb in trainer.checkpoint_callbacks]
        kept = ", ".join(p for p in saved if p) or "none written yet"
        raise NonFiniteLossError(
            f"training loss is {loss} at epoch {epoch}, batch {batch_idx}, "
            f"global step {global_step}; learning rates: "
            f"{', '.join(f'{name}={lr:g}' for name, lr in lrs)}. "
            f"Training stopped; the last good checkpoint is kept: {kept}. Try a lower lr for "
            "the groups above, gradient clipping (--trainer.gradient_clip_val), or fp32."
        )


def _lrs(trainer: L.Trainer) -> list[tuple[str, float]]:
    """Every param group's name and lr, as the error message names them."""
    return [
        (group.get("name", f"pg{i}"), group["lr"])
        for optimizer in trainer.optimizers
        for i, group in enumerate(optimizer.param_groups)
    ]

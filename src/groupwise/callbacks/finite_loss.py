"""Stop training at the first NaN or infinite loss, before a checkpoint can record it.

What Lightning lacks: ``Trainer(detect_anomaly=True)`` is a slow autograd mode, and
``EarlyStopping(check_finite=True)`` looks only at a monitored metric after validation,
by which time ``last.ckpt`` may already hold the diverged weights. This callback checks
the training loss of every step and raises; no checkpoint is written after a bad loss,
so the last good one stays on disk.

The check costs nothing between reads: each step's loss (already a detached copy, made
by Lightning) is kept in a list, and the pending losses are tested together, with a few
tensor ops and one host read, on the logging steps
(every ``check_every_n_steps``, by default the trainer's ``log_every_n_steps``, after the
same optimizer steps at which Lightning writes the logged values, which read the device
anyway), before validation, at the end of each epoch and of training, and before any
checkpoint is written. The error names the first bad step, however many steps later it is
read. The same holds on the CPU, where a read costs nothing but the rule is kept the same,
so that the steps that read are the same on every device (``tests/test_host_sync.py``).

Under DDP every rank reads its flag at the same steps and the decision is reduced across
the ranks (``strategy.reduce_boolean_decision``): if any rank saw a bad loss, every rank
raises at the same step with the same message, naming the earliest bad step and the rank
that had it (a rank that raised alone would leave the others waiting in the next
collective, with NCCL until its timeout).
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
        check_every_n_steps: read the device-side check after every N-th optimizer step
            (``trainer.global_step`` divisible by N); ``None``: the trainer's
            ``log_every_n_steps`` (50 when that is 0).
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ConfigError(
                f"check_every_n_steps must be a positive integer or None, got {check_every_n_steps}"
            )
        self.check_every_n_steps = check_every_n_steps
        # (loss, epoch, batch_idx, global_step, lrs) of each step since the last read
        self._pending: list[tuple[torch.Tensor, int, int, int, list[tuple[str, float]]]] = []
        self._read_at = -1  # the global step of the last read on a check step

    def every(self, trainer: L.Trainer) -> int:
        """The optimizer steps between two reads of the check."""
        return self.check_every_n_steps or trainer.log_every_n_steps or 50

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
        # no tensor op here: a loss that still needs its graph is the only one detached; the
        # lrs of every pending step are kept, since a per-step schedule changes them
        loss = loss.detach() if loss.requires_grad else loss
        self._pending.append(
            (loss, trainer.current_epoch, batch_idx, trainer.global_step, _lrs(trainer))
        )
        step = trainer.global_step  # counts this batch's step; unchanged while accumulating
        if step % self.every(trainer) == 0 and step != self._read_at:
            self._read_at = step
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
        """Test the pending steps' losses (one host read, and under DDP one reduction across
        the ranks); raise on every rank if any rank's loss was bad at a pending step."""
        if not self._pending:
            return
        pending = [step[0] for step in self._pending]
        if any(loss.ndim for loss in pending) or len({loss.dtype for loss in pending}) > 1:
            pending = [loss.float().sum() for loss in pending]  # one number per step
        losses = torch.stack(pending).float()
        bad = ~torch.isfinite(losses)
        first = int(torch.where(bad.any(), bad.to(torch.uint8).argmax(), -1))  # the host read
        if not trainer.strategy.reduce_boolean_decision(first >= 0, all=False):
            self._pending.clear()
            return
        index, rank = first, trainer.global_rank
        loss = float(losses[first]) if first >= 0 else 0.0
        if trainer.world_size > 1:  # which rank saw it first: every rank picks the same
            mine = torch.tensor([first, loss], dtype=torch.float64, device=losses.device)
            seen = trainer.strategy.all_gather(mine).view(-1, 2).tolist()
            index, rank, loss = min(
                (int(i), r, value) for r, (i, value) in enumerate(seen) if i >= 0
            )
        self._raise(trainer, self._pending[index], loss, rank if trainer.world_size > 1 else None)

    def _raise(self, trainer: L.Trainer, step: tuple, loss: float, rank: int | None) -> None:
        _, epoch, batch_idx, global_step, lrs = step
        saved = [cb.last_model_path or cb.best_model_path for cb in trainer.checkpoint_callbacks]
        kept = ", ".join(p for p in saved if p) or "none written yet"
        where = "" if rank is None else f" on rank {rank}"
        raise NonFiniteLossError(
            f"training loss is {loss} at epoch {epoch}, batch {batch_idx}, "
            f"global step {global_step}{where}; learning rates: "
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

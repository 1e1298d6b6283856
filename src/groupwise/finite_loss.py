"""Stop training at the first NaN or infinite loss, before a checkpoint can record it.

What Lightning lacks: ``Trainer(detect_anomaly=True)`` is a slow autograd mode, and
``EarlyStopping(check_finite=True)`` looks only at a monitored metric after validation,
by which time ``last.ckpt`` may already hold the diverged weights. This callback checks
the training loss after every step and raises at once; no checkpoint is written after it,
so the last good one stays on disk.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(Callback):
    """Raise ``NonFiniteLossError`` naming the step and every group's lr on a bad loss.

    The check reads the loss on the host after each step (as the progress bar does).
    """

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or bool(torch.isfinite(loss.detach()).all()):
            return
        lrs = ", ".join(
            f"{group.get('name', f'pg{i}')}={group['lr']:g}"
            for optimizer in trainer.optimizers
            for i, group in enumerate(optimizer.param_groups)
        )
        saved = [cb.last_model_path or cb.best_model_path for cb in trainer.checkpoint_callbacks]
        kept = ", ".join(p for p in saved if p) or "none written yet"
        raise NonFiniteLossError(
            f"training loss is {loss.item()} at epoch {trainer.current_epoch}, batch "
            f"{batch_idx}, global step {trainer.global_step}; learning rates: {lrs}. "
            f"Training stopped; the last good checkpoint is kept: {kept}. Try a lower lr for "
            "the groups above, gradient clipping (--trainer.gradient_clip_val), or fp32."
        )

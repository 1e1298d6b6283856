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

No checkpoint holds non-finite weights either: a loss can be finite at the step whose
update made the weights NaN, and Lightning calls no callback's ``on_save_checkpoint`` for a
weights-only save (``ModelCheckpoint(save_weights_only=True)``), so the weights are checked
too, in every checkpoint about to be written (:meth:`FiniteLossGuard.check_checkpoint`, one
host read per save, called by this hook and by ``Classifier.on_save_checkpoint``, which
Lightning calls for every save). The error names as "the last good checkpoint" only files
that exist and whose weights were read back finite.

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

from groupwise.checkpoint.io import CheckpointError, load_checkpoint_file
from groupwise.errors import ConfigError, UserError


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""


class NonFiniteWeightsError(NonFiniteLossError):
    """The weights of a checkpoint about to be written are NaN or infinite."""


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
        self._checked: dict[str, Any] | None = None  # the last checkpoint dict checked

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
        self.check_checkpoint(trainer, checkpoint)

    def check_checkpoint(self, trainer: L.Trainer, checkpoint: dict[str, Any]) -> None:
        """Before ``checkpoint`` is written: the pending losses (``check``), then its weights
        (``state_dict``'s floating-point tensors, buffers included: one host read, and under
        DDP one reduction). Raising here aborts the save before anything is written. A
        checkpoint dict already checked (this hook and the LightningModule's, for one save)
        is not checked again."""
        if checkpoint is self._checked:
            return
        self.check(trainer)
        tensors = {
            name: t
            for name, t in checkpoint.get("state_dict", {}).items()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        }
        if tensors:
            finite = torch.stack([t.isfinite().all() for t in tensors.values()])
            first = int(torch.where(finite.all(), -1, (~finite).to(torch.uint8).argmax()))
        else:
            first = -1
        if trainer.strategy.reduce_boolean_decision(first >= 0, all=False):
            self._raise_weights(trainer, list(tensors)[first] if first >= 0 else None)
        self._checked = checkpoint

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
        where = "" if rank is None else f" on rank {rank}"
        raise NonFiniteLossError(
            f"training loss is {loss} at epoch {epoch}, batch {batch_idx}, "
            f"global step {global_step}{where}; learning rates: "
            f"{', '.join(f'{name}={lr:g}' for name, lr in lrs)}. "
            f"Training stopped; {_kept(trainer)}. Try a lower lr for "
            "the groups above, gradient clipping (--trainer.gradient_clip_val), or fp32."
        )

    def _raise_weights(self, trainer: L.Trainer, tensor: str | None) -> None:
        which = f" ({tensor} first)" if tensor else " (on another rank)"
        raise NonFiniteWeightsError(
            f"the weights are NaN or infinite{which} at epoch {trainer.current_epoch}, "
            f"global step {trainer.global_step}, as a checkpoint was about to be saved; "
            f"learning rates: {', '.join(f'{name}={lr:g}' for name, lr in _lrs(trainer))}. "
            f"Training stopped without writing it; {_kept(trainer)}. Try a lower lr for "
            "the groups above, gradient clipping (--trainer.gradient_clip_val), or fp32."
        )


def _kept(trainer: L.Trainer) -> str:
    """The checkpoints the callbacks name as written (last, best, top k) that are on disk
    with finite weights, as the error names them: each file is read back and checked, so
    a file whose save was aborted, or one written with non-finite weights by anything
    else, is not called good."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        named = [callback.last_model_path, callback.best_model_path]
        named += list(getattr(callback, "best_k_models", {}))
        paths += [p for p in named if p and p not in paths]
    good = [p for p in paths if _finite_file(p)]
    return f"the last good checkpoint is kept: {', '.join(good) or 'none written yet'}"


def _finite_file(path: str) -> bool:
    """Whether ``path`` is a readable checkpoint whose weights are all finite."""
    try:
        checkpoint = load_checkpoint_file(path, mmap=True)
    except (CheckpointError, OSError):
        return False
    tensors = checkpoint.get("state_dict", {}).values()
    return all(
        bool(t.isfinite().all())
        for t in tensors
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    )


def _lrs(trainer: L.Trainer) -> list[tuple[str, float]]:
    """Every param group's name and lr, as the error message names them."""
    return [
        (group.get("name", f"pg{i}"), group["lr"])
        for optimizer in trainer.optimizers
        for i, group in enumerate(optimizer.param_groups)
    ]

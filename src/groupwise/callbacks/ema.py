"""An exponential moving average of the weights, for validation, test and the checkpoints.

Lightning's ``EMAWeightAveraging`` (lightning/pytorch/callbacks/weight_averaging.py) does the
work: after every optimizer step it updates a ``torch.optim.swa_utils.AveragedModel``
(``average = decay * average + (1 - decay) * weights``, parameters and buffers), swaps the
average in for each validation, saves it as the checkpoint's ``state_dict`` (the training
weights go to ``current_model_state``, the average's step count to ``averaging_state``),
restores both on ``--ckpt_path`` resume, and copies the average into the model when
training ends, so ``test`` after ``fit`` and every checkpoint hold the averaged weights.

What it lacks, added here:

- Until its first update the average is the copy it made in ``setup``: the weights before
  any ``WeightInit`` callback listed after it and before ``--model.init_weights`` (both run
  in ``setup`` too), and with ``update_starting_at_step`` / ``update_starting_at_epoch``
  the initial weights long after training has moved on. Validation, ``val/acc``-selected
  checkpoints and the end of training then use those stale weights. Here the average
  follows the training weights until its first update.
- ``update_starting_at_epoch`` did not delay the step updates: Lightning's
  ``should_update`` passes every step when ``update_starting_at_step`` is None, and with
  step updates on it also updates at each epoch end from that epoch, averaging the last
  step's weights twice. Here a step is averaged only from ``update_starting_at_epoch`` on
  (and from ``update_starting_at_step``, every ``update_every_n_steps``), and an epoch end
  only where there are no step updates (``update_every_n_steps: 0``).
- It says nothing: with ``update_starting_at_step`` / ``update_starting_at_epoch`` nothing
  shows when validation and the checkpoints switch from the training weights to the
  average. Here the first update prints one line (through Lightning's ``rank_zero_info``,
  rank 0 only) with its step and epoch, and ``ema/updates``, the number of updates in
  the average, is logged at that step and at the end of each training epoch.
- Its ``setup`` warns that a model overriding ``configure_model`` may run out of memory
  (sharded layers are not supported). ``Classifier.configure_model`` creates no layers (it
  converts the memory format and compiles), so that warning is dropped here.

YAML::

    trainer:
      callbacks:
        - class_path: groupwise.callbacks.EMAWeightAveraging
          init_args: {decay: 0.999}   # per optimizer step: about the last 1,000 steps
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging as LightningEMAWeightAveraging
from lightning.pytorch.utilities import rank_zero_info


class EMAWeightAveraging(LightningEMAWeightAveraging):
    """Lightning's ``EMAWeightAveraging``, whose average follows the training weights until
    its first update. Arguments as Lightning's: ``decay`` (per update), ``update_every_n_steps``,
    ``update_starting_at_step``, ``update_starting_at_epoch``, ``use_buffers`` (average the
    batch-norm statistics too), ``device``."""

    _epoch = 0  # the epoch of the step being checked (Lightning passes only its index)
    _updates = 0  # updates in the average (its n_averaged, counted here without a host read)
    _updating = False  # the latest should_update said yes: Lightning updates right after

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is not None:
            start = self.update_starting_at_epoch
            reached = start is None or self._epoch >= start
            update = reached and super().should_update(step_idx=step_idx)
        elif epoch_idx is not None and self.update_every_n_steps > 0:
            update = False  # the step updates already averaged this epoch's last weights
        else:
            update = super().should_update(epoch_idx=epoch_idx)
        self._updating = update
        return update

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # after a resume has restored the average: one host read per fit
        average = self._average_model
        self._updates = 0 if average is None else int(average.n_averaged)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._epoch = trainer.current_epoch
        self._updating = False
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._count_update(trainer):
            self._log_updates(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._updating = False
        super().on_train_epoch_end(trainer, pl_module)
        self._count_update(trainer)
        self._log_updates(trainer)

    def _count_update(self, trainer: Trainer) -> bool:
        """Count the update Lightning made just now, if any; say so at the first, and
        return whether it was the first."""
        if not self._updating:
            return False
        self._updating = False
        self._updates += 1
        if self._updates == 1:
            rank_zero_info(
                f"EMAWeightAveraging: averaging from step {trainer.global_step} (epoch"
                f" {trainer.current_epoch}) on: validation, checkpoints and the final weights"
                " use the average from here"
            )
        return self._updates == 1

    def _log_updates(self, trainer: Trainer) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({"ema/updates": float(self._updates)}, step=trainer.global_step)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*overrides the configure_model callback")
            super().setup(trainer, pl_module, stage)

    def _follow_until_started(self, pl_module: LightningModule) -> None:
        """Before the first update, make the average a copy of the training weights."""
        average = self._average_model
        if average is None or average.n_averaged > 0:
            return
        module = average.module
        with torch.no_grad():
            for mine, theirs in zip(
                itertools.chain(module.parameters(), module.buffers()),
                itertools.chain(pl_module.parameters(), pl_module.buffers()),
                strict=True,
            ):
                mine.copy_(theirs)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._follow_until_started(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._follow_until_started(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._follow_until_started(pl_module)
        super().on_train_end(trainer, pl_module)

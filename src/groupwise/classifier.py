"""The LightningModule: any ``nn.Module`` net, cross-entropy, accuracy, named param groups."""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from groupwise.checkpoint.averaged import check_resume_averaging, weights_note
from groupwise.checkpoint.compat import (
    LAYOUT_KEY,
    check_group_layout,
    check_state_dict,
    group_layout,
    saved_layout,
)
from groupwise.checkpoint.io import load_checkpoint_file
from groupwise.optim.param_groups import build_param_groups, describe, format_table
from groupwise.optim.scheduler_checks import check_interval, check_milestones
from groupwise.optim.warmup_linear import WarmupLinearLR


class Classifier(LightningModule):
    """Image classifier whose optimizer has named parameter groups.

    Batches are ``(images, labels)`` with images already normalised floats (the
    DataModule's ``on_after_batch_transfer`` does that on the device).

    Args:
        net: the network, any ``torch.nn.Module`` mapping images to logits.
        optimizer: the optimizer class and its defaults (YAML ``class_path`` /
            ``init_args``); called here with the built parameter groups.
        scheduler: the learning-rate scheduler; ``None`` for none.
        scheduler_interval: step the scheduler after every ``epoch`` (milestones count
            epochs) or every optimizer ``step``.
        param_groups: group rules, tried in order (see ``groupwise.optim.param_groups``).
            Parameters no rule matches go to the group ``default``.
        no_decay_split: put each group's biases and norm parameters into
            ``<name>.no_decay`` with weight decay 0.
        num_classes: number of classes (the net's output size).
        label_smoothing: cross-entropy label smoothing, 0 for none.
        init_weights: a checkpoint whose model weights (only) are loaded when ``fit``
            starts: a new run with a fresh optimizer and schedule. To resume a run
            (optimizer, schedule and epoch too) use ``--ckpt_path`` instead.
        tta_flip: flip test-time augmentation: in validation, test and predict the logits
            are the mean of the net's logits on the images and on their left-right mirror
            images; loss, accuracy and the returned logits are those averaged logits.
            Training is unaffected.
        channels_last: hold the net's 4-D parameters and the input images in the
            ``torch.channels_last`` memory format (faster convolutions on recent GPUs,
            mostly with mixed precision). Only strides change: the state dict's values
            are the same, so checkpoints load with or without it.
        compile: compile the net with ``nn.Module.compile`` (``torch.compile`` of its
            forward, in place). The state dict keys stay the same, so checkpoints load
            with or without it. The first steps are slow while it compiles.
            This and the parameters' conversion of ``channels_last`` happen in
            ``configure_model``, which a ``Trainer`` calls; a model used without one
            (e.g. straight after ``load_from_checkpoint``) is neither converted nor compiled.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerCallable = torch.optim.SGD,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        param_groups: list[dict[str, Any]] | None = None,
        no_decay_split: bool = False,
        num_classes: int = 10,
        label_smoothing: float = 0.0,
        init_weights: str | None = None,
        tta_flip: bool = False,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # Under LightningCLI the saved hparams are the config (class paths and init args),
        # so ``Classifier.load_from_checkpoint(path)`` rebuilds the net with no arguments.
        self.save_hyperparameters()
        self.net = net
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.init_weights = init_weights
        self.param_groups = param_groups or []
        self.no_decay_split = no_decay_split
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.tta_flip = tta_flip
        self.channels_last = channels_last
        self.compile_net = compile  # not ``self.compile``: that is nn.Module's method
        self._net_compiled = False
        # average="micro": the fraction of images classified right. torchmetrics' default
        # ("macro", the mean of per-class recalls) differs from it on unbalanced batches.
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def __deepcopy__(self, memo: dict[int, Any]) -> Classifier:
        """A copy of the net, metrics and hyper-parameters that shares the optimizer and
        scheduler factories. Under LightningCLI those are partials that reference the CLI,
        hence its trainer and the DataModule with the whole data set in memory: a plain
        deepcopy (``AveragedModel`` for weight averaging, the lr finder's copy) copied all of
        that, and under DDP failed on the process group's locks."""
        for factory in (self.optimizer, self.scheduler):
            memo[id(factory)] = factory
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        return new

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _logits(self, images: torch.Tensor, tta: bool) -> torch.Tensor:
        """The net's logits, or with ``tta`` the mean of those of the images and their
        mirror images."""
        if not tta:
            return self(images)
        # One forward pass over a batch of 2N (the images, then their mirror images) rather
        # than two passes of N: cheaper on small batches. The batch's make-up changes no
        # image's logits because in validation, test and predict Lightning puts the net in
        # eval mode, where BatchNorm uses its running statistics.
        both = self(torch.cat([images, images.flip(3)]))
        return both.unflatten(0, (2, len(images))).mean(0)

    def _loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], tta: bool = False
    ) -> tuple[torch.Tensor, ...]:
        images, labels = batch
        logits = self._logits(images, tta)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"the net returned logits of shape {tuple(logits.shape)}; expected "
                f"(batch, {self.num_classes}): set the net's number of classes to "
                f"model.num_classes={self.num_classes}"
            )
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing), logits, labels

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss, logits, labels = self._loss(batch)
        # update, not a call: calling the metric would also compute this batch's accuracy,
        # which nothing reads; the epoch's value is computed once when it is logged.
        self.train_acc.update(logits, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_epoch_end(self) -> None:
        # Logged once per epoch here rather than with on_epoch=True in every training_step:
        # each self.log call costs Lightning's bookkeeping on every step (the largest part
        # of its per-step overhead in scripts/bench_parity.py --profile).
        self.log("train/acc", self.train_acc)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._evaluate(batch, "test", self.test_acc)

    def _evaluate(self, batch, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        """Log loss and accuracy; return the logits (callbacks such as the confusion
        matrix read them; Lightning 2 keeps no outputs, so nothing accumulates)."""
        loss, logits, labels = self._loss(batch, tta=self.tta_flip)
        accuracy(logits, labels)
        self.log(f"{stage}/loss", loss, sync_dist=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)
        return logits.detach()

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        """Class probabilities for each image (of the flip-averaged logits with ``tta_flip``)."""
        return self._logits(batch[0], self.tta_flip).softmax(dim=-1)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.init_weights:
            # Before DDP wraps the net and before any --ckpt_path restore: every rank loads
            # the same file, and a full resume still wins over these weights.
            checkpoint = load_checkpoint_file(self.init_weights)
            check_state_dict(checkpoint["state_dict"], self.state_dict(), self.init_weights)
            self.load_state_dict(checkpoint["state_dict"])
            note = weights_note(checkpoint)
            rank_zero_info(f"Initialised the model weights from {self.init_weights}{note}")

    def configure_model(self) -> None:
        # Lightning's order (trainer._run): setup, configure_model, the restore of a
        # --ckpt_path checkpoint's weights, then the strategy moves the model to its device,
        # wraps it (DDP) and calls configure_optimizers. So the optimizer is built on the
        # converted parameters; a restore copies values into them (``copy_`` keeps their
        # strides); ``.to(device)`` preserves the memory format. This hook runs for every
        # trainer call (fit, then test, ...): the conversion is idempotent, compiling is not.
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.compile_net and not self._net_compiled:
            # nn.Module.compile, not torch.compile(net): the latter wraps the net in an
            # OptimizedModule whose state dict keys gain an ``_orig_mod.`` prefix.
            self.net.compile()
            self._net_compiled = True

    def build_param_groups(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The optimizer's param groups from the rules, and the optimizer's defaults."""
        # The optimizer's defaults as configured (lr, momentum, ...) decide which options a
        # group may set and the base lr of ``lr_scale``: read them off a throwaway instance.
        defaults = self.optimizer([torch.zeros(1, requires_grad=True)]).defaults
        groups = build_param_groups(self.net, self.param_groups, defaults, self.no_decay_split)
        return groups, defaults

    def configure_optimizers(self) -> Any:
        groups, defaults = self.build_param_groups()
        optimizer = self.optimizer(groups)
        rank_zero_info(
            f"{type(optimizer).__name__} parameter groups:\n"
            + format_table(describe(optimizer.param_groups, defaults))
        )
        if self.scheduler is None:
            return optimizer
        scheduler = self.scheduler(optimizer)
        check_milestones(scheduler)
        check_interval(scheduler, self.scheduler_interval)
        if isinstance(scheduler, WarmupLinearLR) and scheduler.total_steps is None:
            scheduler.set_total_steps(self._run_length())
        config = {"scheduler": scheduler, "interval": self.scheduler_interval, "frequency": 1}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    def _run_length(self) -> int:
        """Scheduler steps in the whole run: optimizer steps (all epochs, after DDP sharding
        and gradient accumulation) for ``scheduler_interval: step``, else epochs."""
        if self.scheduler_interval == "step":
            steps = self.trainer.estimated_stepping_batches
        else:
            steps = self.trainer.max_epochs if self.trainer.max_epochs != -1 else float("inf")
        if steps == float("inf") or steps is None:
            needs = (
                "trainer.max_epochs or trainer.max_steps"
                if self.scheduler_interval == "step"
                else "trainer.max_epochs (scheduler_interval: epoch counts epochs)"
            )
            raise ValueError(
                f"WarmupLinearLR with total_steps: null needs a finite run: set {needs},"
                " or give total_steps"
            )
        return int(steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Which parameter is in which group, by name: lets a resume check the layout.
        if self._trainer is not None and self.trainer.optimizers:
            checkpoint[LAYOUT_KEY] = group_layout(self.net, self.trainer.optimizers[0].param_groups)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = f"checkpoint {self.trainer.ckpt_path}" if self._trainer else "the checkpoint"
        check_state_dict(checkpoint["state_dict"], self.state_dict(), source)
        resuming = self._trainer is not None and self.trainer.state.fn == "fit"
        if resuming:
            averaging = any(isinstance(c, WeightAveraging) for c in self.trainer.callbacks)
            check_resume_averaging(checkpoint, averaging, source, self.trainer.ckpt_path)
        elif self._trainer is not None and weights_note(checkpoint):
            rank_zero_info(f"Loading {self.trainer.ckpt_path}{weights_note(checkpoint)}")
        saved = saved_layout(checkpoint)
        if resuming and checkpoint.get("optimizer_states") and saved is not None:
            check_group_layout(saved, group_layout(self.net, self.build_param_groups()[0]), source)

"""The LightningModule: any ``nn.Module`` net, cross-entropy, accuracy, named param groups."""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import MulticlassAccuracy

from groupwise.callbacks.finite_loss import FiniteLossGuard
from groupwise.checkpoint.compat import group_options
from groupwise.checkpoint.resume_checks import ResumeChecks
from groupwise.data.tta import TTALevel, tta_level, tta_logits
from groupwise.errors import ConfigError
from groupwise.metrics.accuracy import TrainAccuracy
from groupwise.optim.group_bounds import check_bounds, group_ratios, scaled_bounds
from groupwise.optim.group_schedule import GroupSchedules, check_lengths, scheduled_indices
from groupwise.optim.group_view import GroupsView, OnGroups
from groupwise.optim.param_groups import describe_optimizer, format_table, parameter_names
from groupwise.optim.per_group import build_groups, build_optimizer
from groupwise.optim.schedule_length import check_length as check_length_against_run
from groupwise.optim.schedule_length import fill_length, run_length, steps_per_epoch
from groupwise.optim.scheduler_checks import check_interval, check_milestones


class Classifier(LightningModule):
    """Image classifier whose optimizer has named parameter groups.

    Batches are ``(images, labels)`` with images already normalised floats (the
    DataModule's ``on_after_batch_transfer`` does that on the device).

    Args:
        net: the network, any ``torch.nn.Module`` mapping images to logits.
        optimizer: the optimizer class and its defaults (YAML ``class_path`` /
            ``init_args``); called here with the built parameter groups. A group rule may
            name its own optimizer (``optimizer:`` in the rule, see
            ``groupwise.optim.per_group``); then Lightning gets a ``CombinedOptimizer``
            with one child per group and this one for the groups that name none.
        scheduler: the learning-rate scheduler; ``None`` for none.
        scheduler_interval: step the scheduler after every ``epoch`` (milestones count
            epochs) or every optimizer ``step``.
        param_groups: group rules, tried in order (see ``groupwise.optim.param_groups``).
            Parameters no rule matches go to the group ``default``. A rule's ``schedule``
            gives its groups their own lr curve, stepped after every optimizer step
            (``groupwise.optim.group_schedule``); ``scheduler`` then acts on the other
            groups only, and Lightning steps both.
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
            Training is unaffected. The same as ``tta: mirror``.
        tta: the test-time augmentation level (``groupwise.data.tta``, airbench94's): ``none``,
            ``mirror`` (as ``tta_flip``) or ``mirror_translate`` (mirror, plus the mirror
            of the images moved one pixel each way over their reflection). ``None``:
            ``mirror`` with ``tta_flip: true``, else ``none``.
        loss_reduction: ``mean`` or ``sum`` of the training step's per-image cross-entropy,
            the loss Lightning backpropagates. With ``sum`` (airbench94's) the gradient is
            ``batch_size`` times the mean's, so an SGD lr on the sum is the mean's lr times
            the batch size (and an lr tuned for one batch size scales with it); Muon's
            update is normalised, so its lr does not change. Under DDP each device sums
            over its own batch and DDP averages the devices' gradients. The logged
            ``train/loss`` and ``val/loss`` are the mean per image either way.
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
        extend_schedule: continue a resumed run (``--ckpt_path``) over a new length, e.g.
            more epochs. Without it, a schedule length that comes from the trainer and
            differs from the checkpoint's is an error, like any other change of the
            optimizer or scheduler settings. With it, a ``WarmupLinearLR`` whose
            ``total_steps`` comes from the trainer is stretched (``WarmupLinearLR.stretch``):
            a warm-up still in progress finishes as planned, then the lr falls linearly from
            its value at the resumed step (the peak, if it was still warming up) to the end
            value at the new last step. A schedule whose length does not come from the
            trainer (``MultiStepLR``'s milestones) goes on as it is, with or without it.
            Nothing else may differ from the checkpoint.
        lr_multiplier: every group's lr, of every optimizer (a rule's own ``lr`` and its
            own optimizer's lr included), times this: the one option that applies what
            ``groupwise lr_find`` suggests. Schedulers then act on these lrs.
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
        extend_schedule: bool = False,
        lr_multiplier: float = 1.0,
        tta: TTALevel | None = None,
        loss_reduction: Literal["mean", "sum"] = "mean",
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
        self.tta = tta_level(tta, tta_flip)
        if loss_reduction not in ("mean", "sum"):
            raise ConfigError(
                f"model.loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}"
            )
        self.loss_reduction = loss_reduction
        self.channels_last = channels_last
        self.compile_net = compile  # not ``self.compile``: that is nn.Module's method
        self.extend_schedule = extend_schedule
        if not 0 < lr_multiplier < math.inf:
            raise ConfigError(
                f"model.lr_multiplier must be a finite number above 0, got {lr_multiplier}"
            )
        self.lr_multiplier = lr_multiplier
        self._net_compiled = False
        # what the checkpoint checks carry from hook to hook (groupwise.checkpoint.resume_checks)
        self.resume_checks = ResumeChecks()
        # average="micro": the fraction of images classified right. torchmetrics' default
        # ("macro", the mean of per-class recalls) differs from it on unbalanced batches.
        # In training, TrainAccuracy: the same value in 5 tensor ops per batch, not 18, and
        # no label check (torch.unique, which would sync a GPU every step).
        self.train_acc = TrainAccuracy()
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

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets _current_fx_name before and after every hook it calls, about 40
        # times per training step; nn.Module.__setattr__ (its parameter, buffer and module
        # checks, ~1 us) has nothing to do for a hook's name, so it is stored directly.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def _logits(self, images: torch.Tensor, tta: str) -> torch.Tensor:
        """The net's logits averaged over the views of the TTA level ``tta``
        (``groupwise.data.tta``; ``"none"``: the net's logits)."""
        return tta_logits(self, images, tta)

    def _loss(
        self, batch: tuple[torch.Tensor, torch.Tensor], tta: str = "none", reduction: str = "mean"
    ) -> tuple[torch.Tensor, ...]:
        """The cross-entropy (``reduction`` over the images), the logits and the labels."""
        images, labels = batch
        logits = self._logits(images, tta)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ConfigError(
                f"the net returned logits of shape {tuple(logits.shape)}; expected "
                f"(batch, {self.num_classes}): set the net's number of classes to "
                f"model.num_classes={self.num_classes}"
            )
        loss = F.cross_entropy(
            logits, labels, label_smoothing=self.label_smoothing, reduction=reduction
        )
        return loss, logits, labels

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        loss, logits, labels = self._loss(batch, reduction=self.loss_reduction)
        # update, not a call: calling the metric would also compute this batch's accuracy,
        # which nothing reads; the epoch's value is computed once when it is logged.
        self.train_acc.update(logits, labels)
        if self._writes_logs():
            # Only on the steps whose values Lightning writes: self.log costs ~0.3 ms of
            # bookkeeping per call, sync_dist an all-reduce, and prog_bar a host read (.item())
            # after every batch (the progress bar shows the step's loss instead).
            mean = loss / len(labels) if self.loss_reduction == "sum" else loss
            self.log("train/loss", mean, sync_dist=True)
        return loss

    def _writes_logs(self) -> bool:
        """Whether Lightning writes the values logged in this training step: after every
        ``log_every_n_steps``-th optimizer step (``global_step`` counts the steps before
        this one), after the step at which the run was told to stop, and every step under
        ``fast_dev_run`` (its rule, in the private ``LoggerConnector.should_update_logs``)."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        due = every > 0 and ((self.global_step + 1) % every == 0 or trainer.should_stop)
        return due or bool(trainer.fast_dev_run)

    def on_train_epoch_end(self) -> None:
        # Logged once per epoch here rather than with on_epoch=True in every training_step:
        # each self.log call costs Lightning's bookkeeping on every step (the largest part
        # of its per-step overhead in `bash scripts/bench.sh parity --profile`).
        self.log("train/acc", self.train_acc)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        return self._evaluate(batch, "test", self.test_acc)

    def _evaluate(self, batch, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        """Log loss and accuracy; return the logits (callbacks such as the confusion
        matrix read them; Lightning 2 keeps no outputs, so nothing accumulates)."""
        loss, logits, labels = self._loss(batch, tta=self.tta)
        accuracy(logits, labels)
        self.log(f"{stage}/loss", loss, sync_dist=True, prog_bar=True)
        self.log(f"{stage}/acc", accuracy, prog_bar=True)
        return logits.detach()

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        """Class probabilities for each image (of the logits averaged over the ``tta`` views)."""
        return self._logits(batch[0], self.tta).softmax(dim=-1)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.init_weights:
            # Before DDP wraps the net and before any --ckpt_path restore: every rank loads
            # the same file, and a full resume still wins over these weights.
            self.resume_checks.load_init_weights(self, self.init_weights)

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

    def build_param_groups(self) -> tuple[list[dict[str, Any]], list[Any]]:
        """The optimizer's param groups from the rules, and for each group the factory of
        its own optimizer (``None``: the model's ``optimizer``)."""
        return build_groups(self.net, self.param_groups, self.optimizer, self.no_decay_split)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer over the named parameter groups: the model's ``optimizer``, or a
        ``CombinedOptimizer`` when a rule names its own (``groupwise.optim.per_group``);
        every group's lr times ``lr_multiplier``."""
        optimizer = build_optimizer(
            self.net, self.param_groups, self.optimizer, self.no_decay_split
        )
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * self.lr_multiplier
        return optimizer

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's, returning at once when there is nothing to clip: Lightning calls
        this hook after every backward and its ``clip_gradients`` checks the algorithm
        against its enum before finding a clip value of 0 (~30 us of a CPU step)."""
        if gradient_clip_val:
            super().configure_gradient_clipping(
                optimizer, gradient_clip_val, gradient_clip_algorithm
            )

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        options = group_options(optimizer)  # as configured, before a scheduler changes them
        rank_zero_info(
            f"{type(optimizer).__name__} parameter groups:\n"
            + format_table(describe_optimizer(optimizer, parameter_names(self.net)))
        )
        configs, scheduler, from_trainer = [], None, []
        if self.scheduler is not None:
            length = run_length(self.trainer, self.scheduler_interval)
            scheduler, from_trainer = self._build_scheduler(optimizer, length)
            config = {"scheduler": scheduler, "interval": self.scheduler_interval, "frequency": 1}
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                config |= {"monitor": "val/loss", "reduce_on_plateau": True}
            if isinstance(scheduler.optimizer, GroupsView):  # some groups have their own
                config["scheduler"] = OnGroups(scheduler)
            configs.append(config)
        self.resume_checks.check_settings(self, optimizer, options, scheduler, from_trainer)
        schedules = None
        if scheduled_indices(optimizer):
            # under DDP a frozen parameter fails the reducer: lr 0 there (GroupSchedules)
            freeze = self.trainer.world_size == 1
            schedules = self.build_group_schedules(
                optimizer, steps_per_epoch(self.trainer), freeze=freeze
            )
        if schedules is not None:
            check_lengths(schedules, run_length(self.trainer, "step"))
            # stepped after every optimizer step; logged under the same tags as the run's
            # scheduler (LearningRateMonitor would otherwise add a second set, lr-SGD-1/...)
            name = f"lr-{type(optimizer).__name__}"
            configs.append({"scheduler": schedules, "interval": "step", "name": name})
        if not configs:
            return optimizer
        if len(configs) == 1 and schedules is None:
            return {"optimizer": optimizer, "lr_scheduler": configs[0]}
        return [optimizer], configs

    def build_group_schedules(
        self, optimizer: torch.optim.Optimizer, steps_per_epoch: int | None, freeze: bool = True
    ) -> GroupSchedules | None:
        """The groups' own schedules (``schedule:`` in a rule) on ``optimizer``, given the
        optimizer steps per epoch; ``None`` when no group has one
        (``groupwise.optim.group_schedule``)."""
        if not scheduled_indices(optimizer):
            return None
        return GroupSchedules(optimizer, steps_per_epoch, freeze)

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, length: int | None, check_length: bool = True
    ) -> Any:
        """The configured scheduler on ``optimizer`` (``None`` if there is none), given the
        run's ``length`` in scheduler steps (``None``: no finite length): a length argument
        left empty is filled with it and one given is checked against it
        (``groupwise.optim.schedule_length``); scalar bounds of OneCycleLR / CyclicLR are
        scaled per group (``groupwise.optim.group_bounds``).

        The CLI also builds a throwaway optimizer and scheduler before ``fit`` starts
        (``check_length=False``: the trainer, and so the run's length, does not exist yet),
        so a bad group or schedule stops the run before any run directory is made."""
        if self.scheduler is None:
            return None
        return self._build_scheduler(optimizer, length, check_length)[0]

    def _build_scheduler(
        self, optimizer: torch.optim.Optimizer, length: int | None, check_length: bool = True
    ) -> tuple[Any, list[str]]:
        """``build_scheduler``'s scheduler, and the names of its arguments filled from the
        run's length."""
        optimizer = self._followers(optimizer)
        ratios = group_ratios(optimizer)
        overrides = fill_length(self.scheduler, length, self.scheduler_interval)
        scaled = scaled_bounds(self.scheduler, optimizer)
        overrides |= scaled
        scheduler = self.scheduler(optimizer, **overrides)
        check_bounds(scheduler, ratios)
        check_milestones(scheduler)
        check_interval(scheduler, self.scheduler_interval)
        if check_length:
            check_length_against_run(scheduler, length, self.scheduler_interval)
        return scheduler, sorted(overrides.keys() - scaled.keys())

    @staticmethod
    def _followers(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """What the run's scheduler is built on: the optimizer, or where some groups have a
        schedule of their own, a ``GroupsView`` of the others."""
        scheduled = scheduled_indices(optimizer)
        if not scheduled:
            return optimizer
        others = [i for i in range(len(optimizer.param_groups)) if i not in scheduled]
        if not others:
            raise ConfigError(
                "model.scheduler is set, but every parameter group has a schedule of its own "
                "(schedule: in its rule), so it would act on no group: set model.scheduler: "
                "null, or leave some group to it"
            )
        return GroupsView(optimizer, others)

    def on_train_start(self) -> None:
        # After Lightning restored the scheduler's state (restore_training_state).
        self.resume_checks.stretch_schedule(self.trainer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the group layout, optimizer classes and settings that a resume checks
        self.resume_checks.record(self, checkpoint)
        # Lightning calls this for every save, weights-only ones too, where it calls no
        # callback's on_save_checkpoint: the NaN guard checks the weights about to be saved.
        if self._trainer is not None:
            for callback in self.trainer.callbacks:
                if isinstance(callback, FiniteLossGuard):
                    callback.check_checkpoint(self.trainer, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the net's weights; on a resume the averaging, group layout and optimizer classes
        self.resume_checks.check_loaded(self, checkpoint)

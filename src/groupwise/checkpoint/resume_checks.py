"""What the LightningModule checks and records about checkpoints, as one unit it calls.

``Classifier`` calls ``ResumeChecks`` from its hooks, in Lightning's order:

- ``setup``: ``load_init_weights`` (``--model.init_weights``: the file's weights, checked
  against the net, before any ``--ckpt_path`` restore);
- ``on_load_checkpoint``: ``check_loaded`` (the net's weights; on a resume the weight
  averaging, the group layout and each group's optimizer class; the saved optimizer and
  scheduler settings kept for ``configure_optimizers``);
- ``configure_optimizers``: ``check_settings`` (this run's optimizer and scheduler settings,
  compared with the checkpoint's before any state is loaded: torch's ``load_state_dict``
  would silently replace the config's group options and scheduler arguments);
- ``on_train_start``: ``stretch_schedule`` (``extend_schedule``, after Lightning restored
  the scheduler's state);
- ``on_save_checkpoint``: ``record`` (the group layout, the optimizer classes and the
  settings, which a later resume checks).

The checks themselves are ``groupwise.checkpoint.compat`` and
``groupwise.checkpoint.averaged``; this module only decides which apply when.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from groupwise.checkpoint.averaged import check_resume_averaging, weights_note
from groupwise.checkpoint.compat import (
    LAYOUT_KEY,
    OPTIMIZERS_KEY,
    SETTINGS_KEY,
    check_group_layout,
    check_optimizer_classes,
    check_optimizer_settings,
    check_state_dict,
    group_layout,
    group_options,
    length_change,
    optimizer_classes,
    optimizer_settings,
    saved_layout,
    scheduler_arguments,
    settings_differences,
    training_settings,
)
from groupwise.checkpoint.io import CheckpointError, load_checkpoint_file
from groupwise.optim.combined import class_path
from groupwise.optim.group_view import OnGroups
from groupwise.optim.per_group import template


class Resumable(Protocol):
    """What the checks read of the LightningModule (``groupwise.classifier.Classifier``)."""

    net: nn.Module
    optimizer: Any  # the optimizer factory of the groups that name none
    scheduler_interval: str
    loss_reduction: str
    label_smoothing: float
    extend_schedule: bool
    _trainer: Trainer | None

    @property
    def trainer(self) -> Trainer: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> Any: ...

    def build_param_groups(self) -> tuple[list[dict[str, Any]], list[Any]]: ...

    def build_optimizer(self) -> torch.optim.Optimizer: ...

    def build_scheduler(
        self, optimizer: torch.optim.Optimizer, length: int | None, check_length: bool = True
    ) -> Any: ...


def schedule_end(probe: Any, state: dict[str, Any]) -> str:
    """``"step N of N"`` where the scheduler ``probe``, given a checkpoint's ``state``, has a
    known length (``total_steps``) and has reached it; else ``""``."""
    try:
        probe.load_state_dict(state)
    except (KeyError, TypeError, ValueError):
        return ""
    total = getattr(probe, "total_steps", None)
    if not isinstance(total, int) or probe.last_epoch < total:
        return ""
    return f"step {probe.last_epoch} of {total}"


class ResumeChecks:
    """The checkpoint checks of one LightningModule, and what they carry from hook to hook:
    this run's optimizer and scheduler settings (written into each checkpoint), those of the
    checkpoint a fit resumes from (checked in ``configure_optimizers``), and the new length
    of a stretched schedule (``extend_schedule``)."""

    def __init__(self) -> None:
        self.settings: dict[str, Any] | None = None
        self.resumed: dict[str, Any] | None = None  # settings and scheduler state
        self.stretch_to: int | None = None  # extend_schedule: the new length

    def load_init_weights(self, module: Resumable, path: str) -> None:
        """Load the model weights of checkpoint ``path`` into ``module``, checked against
        its state dict first."""
        checkpoint = load_checkpoint_file(path)
        check_state_dict(checkpoint["state_dict"], module.state_dict(), path)
        module.load_state_dict(checkpoint["state_dict"])
        note = weights_note(checkpoint)
        rank_zero_info(f"Initialised the model weights from {path}{note}")

    def check_settings(
        self,
        module: Resumable,
        optimizer: torch.optim.Optimizer,
        options: Any,
        scheduler: Any,
        filled: list[str],
    ) -> None:
        """Keep this run's optimizer and scheduler settings (``options``: the groups'
        options as configured, before a scheduler changed them; ``scheduler``: ``None`` for
        none; ``filled``: its arguments filled from the run's length); when resuming, stop
        (before any state is loaded) if they differ from the checkpoint's. A length from the
        trainer may differ with ``extend_schedule`` (see ``Classifier``)."""
        loss = {
            "model.loss_reduction": module.loss_reduction,
            "model.label_smoothing": float(module.label_smoothing),
        }
        if scheduler is None:
            training = training_settings(module.trainer, None, loss)
            settings = optimizer_settings(optimizer, options, None, training)
        else:
            arguments = scheduler_arguments(scheduler, options, filled)
            training = training_settings(module.trainer, module.scheduler_interval, loss)
            settings = optimizer_settings(optimizer, options, arguments, training)
        self.settings = settings
        resumed, self.resumed = self.resumed, None
        if resumed is None:
            return
        saved, path = resumed["settings"], str(module.trainer.ckpt_path)
        source = f"checkpoint {path}"
        change = length_change(saved, settings)
        if change is None:
            check_optimizer_settings(saved, settings, source, path)
            return
        # The config with the checkpoint's length: what else differs?
        name, saved_length, length = change
        probe_optimizer = module.build_optimizer()
        options = group_options(probe_optimizer)
        probe = module.build_scheduler(probe_optimizer, saved_length, check_length=False)
        same_length = optimizer_settings(
            probe_optimizer,
            options,
            scheduler_arguments(probe, options, [name]),
            settings["training"],
        )
        state = resumed["scheduler_state"]
        if not module.extend_schedule:  # raises: the length differs
            # offer extend_schedule only where it works, and nothing but a new run once the
            # saved schedule has ended
            ended = schedule_end(probe, state)
            only_length = not settings_differences(saved, same_length)
            stretch = self.stretch_problem(probe, state, length, path) if only_length else ""
            extend = stretch is None
            check_optimizer_settings(saved, settings, source, path, extend, ended)
        check_optimizer_settings(saved, same_length, source, path)  # nothing but the length
        problem = self.stretch_problem(probe, state, length, path)
        if problem is not None:
            raise CheckpointError(problem)
        self.stretch_to = length

    def stretch_problem(
        self, probe: Any, state: dict[str, Any], length: int, path: str
    ) -> str | None:
        """Why the saved schedule cannot be stretched to ``length`` (tried on ``probe``, a
        copy of the scheduler, given the checkpoint's ``state``), or None where it can."""
        name = type(probe).__name__
        if not hasattr(probe, "stretch"):
            return (
                f"extend_schedule: {name} cannot stretch the rest of its schedule (WarmupLinearLR"
                f" can): resume {path} with its length, or start a new run from its weights: "
                f"--model.init_weights {path}"
            )
        probe.load_state_dict(state)
        if probe.last_epoch >= probe.total_steps:
            return (
                f"extend_schedule: the schedule of checkpoint {path} has ended (step "
                f"{probe.last_epoch} of {probe.total_steps}): there is nothing left to stretch; "
                "to train on, start a new run from its weights with its own schedule: "
                f"--model.init_weights {path}"
            )
        try:
            probe.stretch(length)
        except ValueError as error:
            return f"extend_schedule: {error}"
        return None

    def stretch_schedule(self, trainer: Trainer) -> None:
        """``extend_schedule``: stretch the restored scheduler to the new length, once."""
        if self.stretch_to is not None:
            scheduler = trainer.lr_scheduler_configs[0].scheduler
            if isinstance(scheduler, OnGroups):  # the run's, on the groups that follow it
                scheduler = scheduler.scheduler
            before = scheduler.total_steps
            start, factor = scheduler.stretch(self.stretch_to)
            rank_zero_info(
                f"extend_schedule: {type(scheduler).__name__} stretched from {before} to "
                f"{self.stretch_to} steps: from step {start} each group's lr falls linearly "
                f"from {factor:.6g} x its peak to {scheduler.end_factor:g} x its peak at step "
                f"{self.stretch_to}"
            )
            self.stretch_to = None

    def record(self, module: Resumable, checkpoint: dict[str, Any]) -> None:
        """Write into ``checkpoint`` what a resume checks."""
        # Which parameter is in which group, by name: lets a resume check the layout.
        if module._trainer is not None and module.trainer.optimizers:
            optimizer = module.trainer.optimizers[0]
            checkpoint[LAYOUT_KEY] = group_layout(module.net, optimizer.param_groups)
            # and which optimizer class steps each group: lets a resume check that too
            checkpoint[OPTIMIZERS_KEY] = optimizer_classes(optimizer)
        # The optimizer's class, each group's configured options and the scheduler's
        # arguments: lets a resume check that the config still asks for the same.
        if self.settings is not None:
            checkpoint[SETTINGS_KEY] = self.settings

    def check_loaded(self, module: Resumable, checkpoint: dict[str, Any]) -> None:
        """Check a checkpoint Lightning is loading into ``module``: its weights always; on a
        resume (``fit``) also the weight averaging, the group layout and the optimizer
        classes, and keep its settings for ``check_settings``."""
        trainer = module._trainer
        source = f"checkpoint {module.trainer.ckpt_path}" if trainer else "the checkpoint"
        check_state_dict(checkpoint["state_dict"], module.state_dict(), source)
        resuming = trainer is not None and module.trainer.state.fn == "fit"
        if resuming:
            averaging = any(isinstance(c, WeightAveraging) for c in module.trainer.callbacks)
            check_resume_averaging(checkpoint, averaging, source, module.trainer.ckpt_path)
        elif trainer is not None and weights_note(checkpoint):
            rank_zero_info(f"Loading {module.trainer.ckpt_path}{weights_note(checkpoint)}")
        saved = saved_layout(checkpoint)
        if resuming and checkpoint.get("optimizer_states") and saved is not None:
            groups, factories = module.build_param_groups()
            check_group_layout(saved, group_layout(module.net, groups), source)
            saved_classes = checkpoint.get(OPTIMIZERS_KEY, {})
            # where an optimizer per group is involved, name each group whose class changed
            # (a whole optimizer's class change is in the settings check's full message)
            if any(factories) or len(set(saved_classes.values())) > 1:
                current = {
                    group["name"]: class_path(template(factory or module.optimizer))
                    for group, factory in zip(groups, factories, strict=True)
                }
                check_optimizer_classes(saved_classes, current, source)
        if resuming and checkpoint.get("optimizer_states"):
            settings = checkpoint.get(SETTINGS_KEY)
            schedulers = checkpoint.get("lr_schedulers") or [None]
            self.resumed = settings and {"settings": settings, "scheduler_state": schedulers[0]}
            if settings is None:
                rank_zero_warn(
                    f"{source} records no optimizer and scheduler settings (it predates "
                    "them): whether this config's match it is not checked; the resume "
                    "uses the checkpoint's"
                )

"""Fine-tuning by named parameter group: keep some groups frozen for their first epochs.

``FreezeGroups({"features": 2})`` keeps the optimizer group ``features`` (and its
``features.no_decay`` half) from being updated in epochs 0 and 1; from epoch 2 on it trains
at its own lr, whatever the scheduler has made of that group's lr meanwhile (the group
never leaves the optimizer, so the scheduler steps it all along). ``set_group_lr`` changes
a named group's lr mid-training.

What Lightning's ``BaseFinetuning`` / ``BackboneFinetuning`` (lightning/pytorch/callbacks/
finetuning.py) does, and why this callback does otherwise:

- It sets ``requires_grad=False`` in the ``setup`` hook and, at the unfreeze epoch,
  ``requires_grad=True`` plus ``optimizer.add_param_group``: the unfrozen parameters land
  in a new anonymous group (``lr-SGD/pg3`` in TensorBoard), not in their named group with
  its weight decay, momentum and no-decay split; the callback must checkpoint a map of
  those extra groups to rebuild them on resume; and the model's ``configure_optimizers``
  has to filter on ``requires_grad``. Here the optimizer and its groups are never touched:
  same object, same named groups, every other group's momentum buffers kept.
- Under DDP its freeze runs before the model is wrapped, and DDP's reducer registers only
  the parameters with ``requires_grad=True`` at wrap time (``_build_params_for_reducer`` in
  torch/nn/parallel/distributed.py). Parameters unfrozen later get local gradients that are
  never all-reduced: each rank steps them with its own gradient and the ranks silently
  diverge (``tests/test_finetune.py`` shows it). Here ``requires_grad`` stays ``True``
  throughout, so DDP registers and synchronises every parameter from the start.

How a group is frozen: in ``on_before_optimizer_step`` (after backward, hence after DDP's
all-reduce, after AMP unscaling; before gradient clipping and ``optimizer.step``, see
``Precision._after_closure`` in lightning/pytorch/plugins/precision/precision.py) the
gradients of the frozen groups' parameters are set to ``None``. Torch's optimizers skip a
parameter whose ``grad`` is ``None`` (``SGD._init_group`` in torch/optim/sgd.py collects
only ``p.grad is not None``; Adam, AdamW, RMSprop and the rest do the same): no update, no
weight decay, and no momentum buffer is created for it until its first real step. Frozen
gradients also do not count in gradient clipping's norm.

The cost, compared with ``requires_grad=False``: backward still computes the frozen
groups' gradients (and DDP still all-reduces them), so a frozen epoch is no cheaper than a
normal one; only the update is skipped. Matching is by identity: the parameters are the
ones in the optimizer's named group lists, nothing is guessed from names or values. The
callback keeps no state: a resume (``--ckpt_path``) freezes by the restored epoch.

What it says: at the first training epoch of a fit in which groups are frozen, one line
(through Lightning's ``rank_zero_info``, rank 0 only) names them and the epoch each
unfreezes; at the epoch a group unfreezes, one line names it and the lr it trains at.
Lightning's ``LearningRateMonitor`` keeps logging a frozen group's lr (the scheduler steps
it all along), so the chart alone shows it training: at each training epoch start a
scalar ``groups/<group>/frozen`` (1 while frozen, 0 once it trains) is logged for every
group that is frozen for some epochs, and ``CustomScalars`` draws these in a chart
``frozen (1: no update)`` beside the lr chart.

Callbacks listed before this one in ``trainer.callbacks`` see the frozen gradients in
their own ``on_before_optimizer_step`` (``GroupStats`` would report them); those listed
after see ``None``.

BatchNorm: the running statistics are buffers, updated by the forward pass, not by the
optimizer. With ``train_bn=False`` the batch-norm layers whose parameters all lie in
frozen groups are put in eval mode for the training epochs in which they are frozen (their
running statistics stay as they were and they normalise with them), and back in train mode
at the start of the epoch their group unfreezes. That switch back is this callback's job:
Lightning sets no train mode per training epoch (a module starts in train mode, and the
evaluation loops only restore the modes they found, ``_ModuleMode`` in
lightning/pytorch/utilities/model_helpers.py). A resumed run starts with every layer in
train mode and puts in eval mode only the layers still frozen at the resumed epoch. Norm
layers without parameters (``affine=False``) belong to no group and are left alone.

YAML::

    trainer:
      callbacks:
        - class_path: groupwise.callbacks.FreezeGroups
          init_args:
            frozen: {features: 2}   # epochs the group (and features.no_decay) stays frozen
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from groupwise.errors import ConfigError, did_you_mean
from groupwise.optim.param_groups import NO_DECAY_SUFFIX, group_name, name_and_parents


def matching_groups(
    param_groups: Sequence[Mapping[str, Any]], name: str
) -> list[Mapping[str, Any]]:
    """The groups called ``name`` or part of it (``<name>.no_decay``, the layer-decay parts
    ``<name>.<module>``); a ``ConfigError`` naming the groups that exist if there is none."""
    found = [
        group
        for index, group in enumerate(param_groups)
        if name in name_and_parents(group_name(group, index))
    ]
    if not found:
        names = [group_name(group, index) for index, group in enumerate(param_groups)]
        raise ConfigError(
            f"no optimizer parameter group named {name!r}{did_you_mean(name, names)}; the"
            f" groups are {names} "
            f"(a name also selects the groups that are part of it: '<name>{NO_DECAY_SUFFIX}',"
            " and '<name>.<module>' of a layer_decay rule)"
        )
    return found


def set_group_lr(optimizer: torch.optim.Optimizer, name: str, lr: float) -> list[str]:
    """Set the lr of the group ``name`` (and of its ``<name>.no_decay`` half) in place.

    The optimizer object, its groups and its state (momentum buffers, Adam moments) are
    kept: only ``group["lr"]`` changes. Returns the names of the groups changed.

    Schedulers: a *chainable* scheduler computes the next lr from the group's current
    ``group["lr"]`` (``MultiStepLR``, ``StepLR``, ``ExponentialLR``, ``ReduceLROnPlateau``;
    see their ``get_lr`` in torch/optim/lr_scheduler.py), so it carries on from the new
    value (a later ``MultiStepLR`` milestone multiplies it by ``gamma``). A scheduler that
    computes the lr from values it stored when it was built (``LambdaLR`` and ``CyclicLR``
    from ``scheduler.base_lrs``, ``OneCycleLR`` from the group's ``initial_lr`` and
    ``max_lr``) overwrites the new value at its next step. Neither ``scheduler.base_lrs``
    nor the group's ``initial_lr`` is changed here: set those too if such a scheduler
    should rescale from the new value.
    """
    if lr < 0:
        raise ConfigError(f"lr must be non-negative, got {lr}")
    groups = matching_groups(optimizer.param_groups, name)
    for group in groups:
        group["lr"] = lr
    index = {id(group): i for i, group in enumerate(optimizer.param_groups)}
    return [group_name(group, index[id(group)]) for group in groups]


class FreezeGroups(Callback):
    """Keep named optimizer parameter groups frozen for their first epochs.

    A frozen group's parameters keep ``requires_grad=True`` (so DDP synchronises them
    once they train) and get no update while frozen: their gradients are dropped just
    before each optimizer step. See the module docstring for the design.

    Args:
        frozen: group name -> number of epochs it stays frozen (epochs ``0 .. n-1``); from
            epoch ``n`` on it trains at its own lr. A name also freezes the groups that are
            part of it: its ``<name>.no_decay`` half and, for a ``layer_decay`` rule, every
            ``<name>.<module>`` (name ``features.no_decay`` or ``backbone.layer1`` alone to
            freeze only that part). Every name must be a group or have parts.
        train_bn: keep training the batch-norm layers of frozen groups (their running
            statistics update in the forward pass, as Lightning's ``train_bn=True``);
            ``False`` puts the batch-norm layers whose parameters are all frozen in eval
            mode while they are frozen, and back in train mode when they unfreeze.
    """

    def __init__(self, frozen: dict[str, int], train_bn: bool = True) -> None:
        for name, epochs in frozen.items():
            if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
                raise ConfigError(
                    f"FreezeGroups: the epochs group {name!r} stays frozen must be an integer"
                    f" >= 0, got {epochs!r}"
                )
        self.frozen = dict(frozen)
        self.train_bn = train_bn
        # id(param) -> number of epochs frozen; built from the optimizers at fit start.
        self._epochs_frozen: dict[int, int] = {}
        # the batch-norm layers this callback put in eval mode (train_bn=False)
        self._in_eval: list[nn.Module] = []
        self._said_frozen = False  # the first training epoch of this fit has been reported

    def frozen_epochs(self, param_groups: Sequence[Mapping[str, Any]]) -> list[int]:
        """For each group of an optimizer, the number of epochs it stays frozen (0: none):
        that of its own name or, failing that, of the nearest name it is part of
        (``backbone.layer4.no_decay`` -> ``backbone.layer4`` -> ``backbone``)."""
        names = [group_name(group, index) for index, group in enumerate(param_groups)]
        return [
            next((self.frozen[n] for n in name_and_parents(name) if n in self.frozen), 0)
            for name in names
        ]

    @staticmethod
    def tag(group: str) -> str:
        """The TensorBoard tag of a group's frozen mark (1 while frozen, 0 once it trains)."""
        return f"groups/{group}/frozen"

    def marked_groups(self, optimizers: Iterable[torch.optim.Optimizer]) -> list[tuple]:
        """(name, epochs frozen, group) of every group frozen for some epochs."""
        return [
            (group_name(group, index), n, group)
            for optimizer in optimizers
            for (index, group), n in zip(
                enumerate(optimizer.param_groups),
                self.frozen_epochs(optimizer.param_groups),
                strict=True,
            )
            if n > 0
        ]

    def check_param_groups(self, param_groups: Sequence[Mapping[str, Any]]) -> None:
        """A ``ConfigError`` for a name in ``frozen`` that is no group of ``param_groups``
        (the CLI calls this before ``fit`` makes its run directory)."""
        for name in self.frozen:
            matching_groups(param_groups, name)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check_param_groups(
            [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
        )
        self._epochs_frozen = {}
        self._said_frozen = False
        for optimizer in trainer.optimizers:
            epochs = self.frozen_epochs(optimizer.param_groups)
            for group, n in zip(optimizer.param_groups, epochs, strict=True):
                for param in group["params"]:
                    self._epochs_frozen[id(param)] = n

    def is_frozen(self, param: torch.Tensor, epoch: int) -> bool:
        return epoch < self._epochs_frozen.get(id(param), 0)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        epoch = trainer.current_epoch
        for group, n in zip(
            optimizer.param_groups, self.frozen_epochs(optimizer.param_groups), strict=True
        ):
            if epoch < n:
                for param in group["params"]:
                    param.grad = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._report(trainer)
        if self.train_bn:
            return
        # Lightning's evaluation loop restores each module's train/eval mode afterwards
        # (``_ModuleMode`` in lightning/pytorch/loops/evaluation_loop.py), so this holds for
        # the whole training epoch; and nothing else switches these layers back to train.
        frozen = frozen_norms(pl_module.modules(), self, trainer.current_epoch)
        for module in self._in_eval:
            if not any(module is f for f in frozen):
                module.train()
        for module in frozen:
            module.eval()
        self._in_eval = frozen

    def _report(self, trainer: Trainer) -> None:
        """The frozen/unfrozen lines and the ``frozen`` marks of this epoch."""
        epoch, step = trainer.current_epoch, trainer.global_step
        marked = self.marked_groups(trainer.optimizers)
        if not marked:
            return
        where = f"FreezeGroups: epoch {epoch} (step {step})"
        frozen = [(name, n) for name, n, _ in marked if epoch < n]
        if frozen and not self._said_frozen:
            until = [f"{names} until epoch {n}" for n, names in names_by_value(frozen).items()]
            rank_zero_info(f"{where}: frozen, no updates: {'; '.join(until)}")
        self._said_frozen = True
        unfrozen = [(name, group["lr"]) for name, n, group in marked if epoch == n]
        if unfrozen:
            at = [f"at lr {lr:g}: {names}" for lr, names in names_by_value(unfrozen).items()]
            rank_zero_info(f"{where}: unfrozen, training {'; '.join(at)}")
        marks = {self.tag(name): float(epoch < n) for name, n, _ in marked}
        for logger in trainer.loggers:
            logger.log_metrics(marks, step=step)


def names_by_value(pairs: Iterable[tuple[str, Any]]) -> dict[Any, str]:
    """Each value of ``(name, value)`` pairs -> the names with it (``"a, b"``), in order."""
    names: dict[Any, list[str]] = {}
    for name, value in pairs:
        names.setdefault(value, []).append(name)
    return {value: ", ".join(group) for value, group in names.items()}


def frozen_norms(
    modules: Iterable[nn.Module], callback: FreezeGroups, epoch: int
) -> list[nn.Module]:
    """The batch-norm layers that have parameters and whose parameters are all frozen."""
    norms = []
    for module in modules:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and all(callback.is_frozen(p, epoch) for p in params):
                norms.append(module)
    return norms

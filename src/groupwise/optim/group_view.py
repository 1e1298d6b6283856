"""A torch scheduler that acts on some of an optimizer's groups, for Lightning to step.

What torch and Lightning lack: a torch scheduler acts on every group of the optimizer it is
built on, and Lightning steps only schedulers built on the optimizer that
``configure_optimizers`` returns (its ``_validate_optimizers_attached``). To let some
groups follow their own schedule (``groupwise.optim.group_schedule``) while the others
follow the run's scheduler, each scheduler is built on a ``GroupsView`` (those groups of
the optimizer, the same dicts, as an ``Optimizer``) and handed to Lightning wrapped in
``OnGroups``, a scheduler of the whole optimizer that steps the one inside.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau


class GroupsView(Optimizer):
    """Some param groups of ``optimizer`` (by index) as an optimizer a torch scheduler can
    be built on. ``param_groups`` reads the optimizer's group dicts at every access (its
    ``load_state_dict`` replaces them), so a scheduler's writes land in the optimizer's
    groups. It never updates a parameter: ``step`` does nothing (see ``OnGroups.step``)."""

    def __init__(self, optimizer: Optimizer, indices: Sequence[int]) -> None:
        # Not Optimizer.__init__: the groups are the optimizer's own, not new ones.
        self.whole = optimizer
        self.indices = list(indices)
        self.defaults = optimizer.defaults
        self.state = optimizer.state
        # the model's optimizer, named in error messages (group_bounds.type_name)
        self.name = getattr(optimizer, "name", None) or type(optimizer).__name__
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        groups = self.whole.param_groups
        return [groups[index] for index in self.indices]

    @property
    def group_optimizers(self) -> list[Optimizer]:
        """With an optimizer per group (``CombinedOptimizer``), those of these groups."""
        children = self.whole.group_optimizers  # AttributeError for a single optimizer
        return [children[index] for index in self.indices]

    def step(self, closure: Callable[[], float] | None = None) -> None:
        """Nothing: the whole optimizer updates these groups' parameters. ``OnGroups``
        calls this right before stepping its scheduler (after Lightning stepped the whole
        optimizer), so torch's check that a scheduler steps after its optimizer holds."""
        return None

    def __repr__(self) -> str:
        pairs = zip(self.indices, self.param_groups, strict=True)
        names = [group.get("name", f"pg{i}") for i, group in pairs]
        return f"GroupsView({type(self.whole).__name__}, {names})"


class OnGroups(LRScheduler):
    """A scheduler built on a ``GroupsView`` (some groups of an optimizer), as a scheduler
    of that whole optimizer (what Lightning steps and checkpoints).

    ``step`` steps the scheduler inside (a ``ReduceLROnPlateau`` with the metric);
    ``state_dict`` / ``load_state_dict`` are exactly its own, so a checkpoint holds the
    same state as that scheduler alone would have. ``scheduler`` is the one inside.
    """

    def __init__(self, scheduler: Any) -> None:
        # Not LRScheduler.__init__: the scheduler inside sets the lrs of its groups; this
        # one has no lr rule of its own.
        view = scheduler.optimizer
        if not isinstance(view, GroupsView):
            raise TypeError(f"OnGroups takes a scheduler built on a GroupsView, not on {view!r}")
        self.view = view
        self.optimizer = view.whole
        self.scheduler = scheduler
        self._step_count = 1
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    @property
    def reduce_on_plateau(self) -> bool:
        """Whether the scheduler inside is a ``ReduceLROnPlateau`` (stepped with a metric)."""
        return isinstance(self.scheduler, ReduceLROnPlateau)

    @property
    def last_epoch(self) -> int:  # type: ignore[override]
        return self.scheduler.last_epoch

    @last_epoch.setter
    def last_epoch(self, value: int) -> None:
        self.scheduler.last_epoch = value

    def step(self, *args: Any, **kwargs: Any) -> None:
        self.view.step()
        self.scheduler.step(*args, **kwargs)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

"""Per-group bounds for the schedulers that set every group to one lr (OneCycleLR, CyclicLR).

What torch lacks: ``OneCycleLR(max_lr=1.0)``, and ``CyclicLR`` with scalar ``base_lr`` and
``max_lr``, write the same lr into every group, so groups configured at different lrs
(``lr_scale``, or a group's own ``lr``) all follow one curve, silently. Here a scalar bound
is multiplied by each group's ratio to the optimizer's lr before the scheduler is built:
with the optimizer at lr 0.1 and groups at 0.1 and 1.0, ``max_lr: 1.0`` becomes
``[1.0, 10.0]``, exactly what ``OneCycleLR(max_lr=[1.0, 10.0])`` does, so the ratios hold at
every step. A list of bounds (one per group, in the optimizer's group order) is used as
given. A scheduler callable whose arguments cannot be read (a lambda, not a class or
``functools.partial``) that gives every group one bound is an error naming the list to give.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer, lr_scheduler

from groupwise.errors import ConfigError
from groupwise.optim.schedule_length import given_arguments, scheduler_class

# The per-group bound arguments of each scheduler class that sets the groups' lrs itself.
BOUNDS: dict[type, tuple[str, ...]] = {
    lr_scheduler.OneCycleLR: ("max_lr",),
    lr_scheduler.CyclicLR: ("base_lr", "max_lr"),
}


def group_ratios(optimizer: Optimizer) -> list[float] | None:
    """Each group's lr over the optimizer's default lr (read before a scheduler changes the
    lrs); ``None`` when the optimizer has no default lr."""
    base = optimizer.defaults.get("lr")
    if not base:
        return None
    return [float(group["lr"]) / float(base) for group in optimizer.param_groups]


def scaled_bounds(scheduler: Callable[..., Any], optimizer: Optimizer) -> dict[str, list[float]]:
    """The keywords to add to the scheduler call: each scalar bound argument as a list, the
    bound times each group's ratio; ``{}`` when there is nothing to scale."""
    names = _bound_names(scheduler_class(scheduler))
    ratios = group_ratios(optimizer)
    if not names or ratios is None or all(ratio == 1.0 for ratio in ratios):
        return {}
    given = given_arguments(scheduler)
    return {
        name: [float(given[name]) * ratio for ratio in ratios]
        for name in names
        if isinstance(given.get(name), int | float)
    }


def check_bounds(scheduler: Any, ratios: Sequence[float] | None) -> None:
    """Raise ``ValueError`` when a built scheduler gives every group the same ``max_lr`` while
    the groups' configured ``ratios`` (``group_ratios`` before it was built) differ."""
    if not _bound_names(type(scheduler)) or ratios is None or len(set(ratios)) < 2:
        return
    groups = scheduler.optimizer.param_groups
    if isinstance(scheduler, lr_scheduler.OneCycleLR):
        bounds = [group["max_lr"] for group in groups]
    else:
        bounds = list(scheduler.max_lrs)
    if len(set(bounds)) > 1:
        return
    base = scheduler.optimizer.defaults["lr"]
    names = ", ".join(
        f"{group.get('name', f'pg{i}')} {ratio:g}"
        for i, (group, ratio) in enumerate(zip(groups, ratios, strict=True))
    )
    suggested = [round(bounds[0] * ratio, 12) for ratio in ratios]
    raise ConfigError(
        f"{type(scheduler).__name__} gives every group the same max_lr, {bounds[0]:g}, so the "
        f"groups' lrs lose their ratios to the optimizer's lr {base:g} ({names}): give max_lr "
        f"one value per group, in this order: {suggested}; or configure the scheduler by class "
        "(YAML class_path, or functools.partial), whose single max_lr is then scaled per group"
    )


def _bound_names(cls: type | None) -> tuple[str, ...]:
    return next((names for base, names in BOUNDS.items() if cls and issubclass(cls, base)), ())

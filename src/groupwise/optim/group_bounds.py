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

The same holds for their momentum cycling (``cycle_momentum``, on by default): torch writes
one ``base_momentum``/``max_momentum`` curve into every group, flattening groups configured
at different momenta (Muon filters at 0.8, SGD at 0.9), and it writes the key that the
*optimizer's defaults* have (``betas[0]`` if they have ``betas``, else ``momentum``) into
every group, whichever key the group's own optimizer reads. Here scalar momentum bounds are
multiplied by each group's momentum (or beta1) over the optimizer's; groups whose optimizers
read different keys, or momenta that cannot be scaled (the optimizer's momentum is 0, or a
scaled bound would pass 1), are an error naming each group's momentum and the fix.
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
# The momentum bounds both classes take, written into every group with ``cycle_momentum``.
MOMENTUM_BOUNDS = ("base_momentum", "max_momentum")


def group_ratios(optimizer: Optimizer) -> list[float] | None:
    """Each group's lr over the optimizer's default lr (read before a scheduler changes the
    lrs); ``None`` when the optimizer has no default lr."""
    base = optimizer.defaults.get("lr")
    if not base:
        return None
    return [float(group["lr"]) / float(base) for group in optimizer.param_groups]


def scaled_bounds(scheduler: Callable[..., Any], optimizer: Optimizer) -> dict[str, list[float]]:
    """The keywords to add to the scheduler call: each scalar bound argument as a list, the
    bound times each group's ratio (the lr bounds by the lr ratio, with ``cycle_momentum``
    the momentum bounds by the momentum ratio); ``{}`` when there is nothing to scale.
    Raises ``ConfigError`` when the momenta cannot keep their ratios (``scaled_momenta``)."""
    cls = scheduler_class(scheduler)
    names = _bound_names(cls)
    if not names:
        return {}
    given = given_arguments(scheduler)
    scaled = _scaled(given, names, group_ratios(optimizer))
    if given.get("cycle_momentum"):
        scaled |= scaled_momenta(cls.__name__, given, optimizer)
    return scaled


def _scaled(
    given: dict[str, Any], names: Sequence[str], ratios: Sequence[float] | None
) -> dict[str, list[float]]:
    """Each scalar argument of ``names`` times each ratio; ``{}`` when every ratio is 1."""
    if ratios is None or all(ratio == 1.0 for ratio in ratios):
        return {}
    return {
        name: [float(given[name]) * ratio for ratio in ratios]
        for name in names
        if isinstance(given.get(name), int | float)
    }


def momentum_of(group: dict[str, Any]) -> tuple[str, float] | None:
    """The momentum key a group's optimizer reads (``betas[0]`` or ``momentum``) and its
    value; ``None`` for a group with neither."""
    if "betas" in group:
        return "betas[0]", float(group["betas"][0])
    if "momentum" in group:
        return "momentum", float(group["momentum"])
    return None


def scaled_momenta(
    scheduler: str, given: dict[str, Any], optimizer: Optimizer
) -> dict[str, list[float]]:
    """The momentum bounds of a scheduler built with ``cycle_momentum`` on ``optimizer``,
    each scalar one times each group's momentum over the optimizer's (its ``defaults``);
    ``{}`` when there is nothing to scale. ``ConfigError`` when the groups' optimizers read
    another key than the one torch writes, or the ratios cannot be kept."""
    groups = optimizer.param_groups
    key = momentum_of(optimizer.defaults)
    if key is None:
        return {}  # torch's own error: "optimizer must support momentum or beta1 ..."
    read = [momentum_of(group) for group in groups]
    names = [group.get("name", f"pg{i}") for i, group in enumerate(groups)]
    classes = _group_classes(optimizer)
    listing = ", ".join(
        f"{name}: " + (f"{r[0]} {r[1]:g}" if r else "no momentum") + f" ({cls})"
        for name, r, cls in zip(names, read, classes, strict=True)
    )
    if any(r is None or r[0] != key[0] for r in read):
        raise ConfigError(
            f"{scheduler} with cycle_momentum writes one key into every group, {key[0]} (as "
            f"{type_name(optimizer)}, the model's optimizer, reads it), but the groups' "
            f"optimizers read different keys ({listing}): set cycle_momentum: false, so that "
            "each group keeps its own momentum"
        )
    momenta = [r[1] for r in read]
    if all(m == key[1] for m in momenta):
        return {}
    fix = (
        "set cycle_momentum: false, or give base_momentum and max_momentum one value per "
        "group, in this order"
    )
    if key[1] == 0:
        raise ConfigError(
            f"{scheduler} with cycle_momentum gives every group one momentum curve, but the "
            f"groups' momenta differ ({listing}) and the optimizer's is 0, so they cannot be "
            f"scaled by their ratio to it: {fix}"
        )
    scaled = _scaled(given, MOMENTUM_BOUNDS, [m / key[1] for m in momenta])
    high = [
        (name, bound)
        for bounds in scaled.values()
        for name, bound in zip(names, bounds, strict=True)
        if bound >= 1
    ]
    if high:
        raise ConfigError(
            f"{scheduler} with cycle_momentum: the groups' momenta ({listing}) scaled by their "
            f"ratio to the optimizer's {key[1]:g} take group {high[0][0]!r} to a momentum of "
            f"{high[0][1]:.4g}, not below 1: {fix}"
        )
    return scaled


def type_name(optimizer: Optimizer) -> str:
    """The class name of an optimizer, or of the model's optimizer in a combined one."""
    return getattr(optimizer, "name", None) or type(optimizer).__name__


def _group_classes(optimizer: Optimizer) -> list[str]:
    children = getattr(optimizer, "group_optimizers", None)
    if children is None:
        return [type(optimizer).__name__] * len(optimizer.param_groups)
    return [type(child).__name__ for child in children]


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

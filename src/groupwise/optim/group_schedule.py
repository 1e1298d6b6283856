"""A parameter group's own lr schedule: ``schedule:`` in a group rule.

::

    model:
      param_groups:
        - name: whiten_bias
          params: ["net.whiten.bias"]
          lr: 0.053                 # the curve's peak
          schedule:
            shape: linear           # linear | cosine | constant | warmup_linear | warmup_cosine
            epochs: 3               # the length: exactly one of epochs / steps
            # warmup: 0.1           # warmup_* shapes: the warm-up's share of the length
            # start_factor: 1.0     # lr factor at the start of the decay (after warm-up)
            # end_factor: 0.0       # lr factor at the end; it stays there after the length
            freeze_at_end: true     # from the end on: requires_grad False

The factor of optimizer step ``s`` (0 is the first step) over a length of ``L`` steps with
``W = round(warmup * L)`` warm-up steps: ``start_factor * s / W`` while ``s < W`` (the
first step at 0, as Hugging Face's ``get_*_schedule_with_warmup``); then from
``start_factor`` at ``W`` to ``end_factor`` at ``L``, along a line (``linear``), a half
cosine (``cosine``), or flat at ``start_factor`` (``constant``); ``end_factor`` from step
``L`` on. airbench94's whitening bias is ``linear`` over 3 epochs: ``lr * (1 - s / L)``,
frozen from step ``L`` on (its ``whiten_bias_grad=(step < whiten_bias_train_steps)``).

A group's lr is its configured lr (the group's ``lr``, ``lr_scale``, ``lr_multiplier``)
times the factor, so that lr is the curve's peak. Steps are optimizer steps whatever the
run's ``scheduler_interval``; ``epochs`` are optimizer steps per epoch times epochs.

What torch lacks: its schedulers (``LinearLR``, ``CosineAnnealingLR``, ``SequentialLR``)
give every group of an optimizer the same length and shape; ``LambdaLR`` takes one function
per group, but torch has no such functions. ``Curve`` is that function (a closed form of the
step, so a resume needs only the step), and ``GroupSchedules`` runs torch's ``LambdaLR``
with one ``Curve`` per scheduled group on those groups alone (``groupwise.optim.group_view``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from groupwise.errors import ConfigError, did_you_mean
from groupwise.optim.group_view import GroupsView, OnGroups

SCHEDULE_KEY = "schedule"  # the rule key, and the optimizer group key holding the spec
SHAPES = ("linear", "cosine", "constant", "warmup_linear", "warmup_cosine")
KEYS = ("shape", "epochs", "steps", "warmup", "start_factor", "end_factor", "freeze_at_end")


def parse_schedule(group: str, spec: Any) -> dict[str, Any]:
    """A rule's ``schedule`` checked and completed with its defaults (the dict the
    optimizer group carries under ``schedule``); a ``ConfigError`` naming the group, the
    bad value and what is valid."""
    if hasattr(spec, "as_dict"):  # a jsonargparse Namespace
        spec = spec.as_dict()
    where = f"parameter group {group!r}: schedule"
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"{where} must be a mapping such as {{shape: linear, epochs: 3}}, got {spec!r}"
        )
    unknown = [key for key in spec if key not in KEYS]
    if unknown:
        keys = ", ".join(f"{key!r}{did_you_mean(key, KEYS)}" for key in unknown)
        raise ConfigError(f"{where} has unknown keys {keys}; valid keys: {list(KEYS)}")
    shape = spec.get("shape")
    if shape not in SHAPES:
        raise ConfigError(
            f"{where}: shape must be one of {list(SHAPES)}, got {shape!r}"
            f"{did_you_mean(str(shape), SHAPES)}"
        )
    lengths = [key for key in ("epochs", "steps") if spec.get(key) is not None]
    if len(lengths) != 1:
        raise ConfigError(
            f"{where} needs exactly one of epochs / steps (its length), got "
            f"{ {key: spec[key] for key in lengths} or 'neither' }"
        )
    unit = lengths[0]
    length = spec[unit]
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(f"{where}: {unit} must be a whole number >= 1, got {length!r}")
    parsed: dict[str, Any] = {"shape": shape, unit: length}
    warmup = spec.get("warmup")
    if shape.startswith("warmup_"):
        if not _number(warmup) or not 0 < warmup < 1:
            raise ConfigError(
                f"{where}: shape {shape} needs warmup, the warm-up's share of the length, "
                f"a number in (0, 1); got {warmup!r}"
            )
        parsed["warmup"] = float(warmup)
        if unit == "steps":  # with epochs, checked once the steps per epoch are known
            curve(parsed | {"start_factor": 1.0, "end_factor": 0.0}, length, group)
    elif warmup is not None:
        raise ConfigError(
            f"{where}: warmup is for the shapes warmup_linear and warmup_cosine, not {shape}"
        )
    for key, default in (("start_factor", 1.0), ("end_factor", 0.0)):
        value = spec.get(key, default)
        if not _number(value) or not 0 <= value < math.inf:
            raise ConfigError(f"{where}: {key} must be a number >= 0, got {value!r}")
        parsed[key] = float(value)
    freeze = spec.get("freeze_at_end", False)
    if not isinstance(freeze, bool):
        raise ConfigError(f"{where}: freeze_at_end must be true or false, got {freeze!r}")
    if freeze and parsed["end_factor"] != 0:
        raise ConfigError(
            f"{where}: freeze_at_end freezes the group once its lr is 0 for good, but "
            f"end_factor is {parsed['end_factor']:g}: set end_factor: 0, or drop freeze_at_end"
        )
    parsed["freeze_at_end"] = freeze
    return parsed


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def describe_schedule(spec: Mapping[str, Any] | None) -> str:
    """A schedule spec in a few words, for the group table (``"linear 1->0 over 3
    epochs, then frozen"``); ``""`` for none."""
    if not spec:
        return ""
    unit = "epochs" if "epochs" in spec else "steps"
    length = spec[unit]
    unit = unit[:-1] if length == 1 else unit
    warmup = f" after {spec['warmup']:g} warm-up" if "warmup" in spec else ""
    factors = (
        f"{spec['start_factor']:g}"
        if spec["shape"] == "constant"
        else f"{spec['start_factor']:g}->{spec['end_factor']:g}"
    )
    text = f"{spec['shape']} {factors}{warmup} over {length} {unit}"
    if spec["shape"] == "constant":
        text += f", then {spec['end_factor']:g}"
    return text + (", then frozen" if spec["freeze_at_end"] else "")


def schedule_steps(spec: Mapping[str, Any], steps_per_epoch: int | None, group: str) -> int:
    """A schedule's length in optimizer steps (``epochs`` x ``steps_per_epoch``)."""
    if "steps" in spec:
        return int(spec["steps"])
    if steps_per_epoch is None:
        raise ConfigError(
            f"parameter group {group!r}: schedule epochs: {spec['epochs']} needs the number "
            "of optimizer steps per epoch, which this data does not have (no length): give "
            "the schedule's length in steps"
        )
    return int(spec["epochs"]) * steps_per_epoch


class Curve:
    """The lr factor of a group at each optimizer step (see the module docstring); a
    callable object, so that torch's ``LambdaLR`` saves its numbers with its state."""

    def __init__(
        self,
        shape: str,
        steps: int,
        warmup: float = 0.0,
        start_factor: float = 1.0,
        end_factor: float = 0.0,
    ) -> None:
        self.shape = shape
        self.steps = int(steps)
        self.warmup_steps = round(warmup * steps) if shape.startswith("warmup_") else 0
        self.start_factor = float(start_factor)
        self.end_factor = float(end_factor)

    def __call__(self, step: int) -> float:
        start, end = self.start_factor, self.end_factor
        if step >= self.steps:
            return end
        if step < self.warmup_steps:
            return start * step / self.warmup_steps
        if self.shape == "constant":
            return start
        done = (step - self.warmup_steps) / (self.steps - self.warmup_steps)
        if self.shape.endswith("cosine"):
            return end + (start - end) * (1 + math.cos(math.pi * done)) / 2
        return start + (end - start) * done

    def __repr__(self) -> str:
        return f"Curve({self.__dict__})"


def curve(spec: Mapping[str, Any], steps: int, group: str) -> Curve:
    """The ``Curve`` of a parsed spec over ``steps`` optimizer steps; a ``ConfigError`` when
    a warm-up would take the whole length."""
    made = Curve(
        spec["shape"], steps, spec.get("warmup", 0.0), spec["start_factor"], spec["end_factor"]
    )
    if made.warmup_steps >= steps:
        raise ConfigError(
            f"parameter group {group!r}: schedule warmup {spec['warmup']:g} of {steps} steps "
            f"is {made.warmup_steps} steps, the whole length: nothing is left to decay; "
            "lower warmup or lengthen the schedule"
        )
    return made


def scheduled_indices(optimizer: Optimizer) -> list[int]:
    """The indices of the optimizer's groups that have a schedule of their own."""
    return [i for i, group in enumerate(optimizer.param_groups) if group.get(SCHEDULE_KEY)]


class GroupSchedules(OnGroups):
    """Every group's own schedule: torch's ``LambdaLR`` with one ``Curve`` per group that
    has a ``schedule``, on those groups only; the other groups are left to the run's
    scheduler. Stepped after every optimizer step.

    ``freeze_at_end``: once a group's curve has ended (its lr is 0 from then on), its
    parameters get ``requires_grad=False``, so backward computes no gradient for them and
    the optimizer skips them (no update, no weight decay, no momentum). This is applied
    after each step and after ``load_state_dict`` (a resume past the end freezes them
    again), and undone only for the groups it froze itself whose curve has not ended (a
    state from before the end): a parameter frozen by anyone else (the user's callback,
    Lightning's ``BaseFinetuning``) is left as it is. With ``freeze=False`` (the
    Classifier passes it under DDP, whose reducer expects a gradient for every parameter
    it wrapped: a parameter that stops requiring one fails plain ``ddp``'s next step) the
    group keeps its gradient and its lr stays 0: the same weights, without the saving.

    Args:
        optimizer: the run's optimizer; its groups' ``schedule`` keys hold the specs.
        steps_per_epoch: optimizer steps per epoch (for lengths in ``epochs``).
        freeze: apply ``freeze_at_end`` (``False``: lr 0 only).
    """

    def __init__(
        self, optimizer: Optimizer, steps_per_epoch: int | None, freeze: bool = True
    ) -> None:
        self.freeze = freeze
        self._frozen_here: list[str] = []  # the groups whose freezing this object did
        indices = scheduled_indices(optimizer)
        groups = [optimizer.param_groups[i] for i in indices]
        names = [group.get("name", f"pg{i}") for i, group in zip(indices, groups, strict=True)]
        specs = [group[SCHEDULE_KEY] for group in groups]
        self.curves = [
            curve(spec, schedule_steps(spec, steps_per_epoch, name), name)
            for spec, name in zip(specs, names, strict=True)
        ]
        self.names = names
        super().__init__(LambdaLR(GroupsView(optimizer, indices), list(self.curves)))
        self._apply_freeze()

    def lengths(self) -> dict[str, int]:
        """Each scheduled group's name -> its schedule's length in optimizer steps."""
        return {name: c.steps for name, c in zip(self.names, self.curves, strict=True)}

    def step(self, *args: Any, **kwargs: Any) -> None:
        super().step(*args, **kwargs)
        self._apply_freeze()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._apply_freeze()

    def frozen(self) -> list[str]:
        """The names of the groups frozen now (``freeze_at_end`` past their end)."""
        return [
            name
            for name, group, c in zip(self.names, self.view.param_groups, self.curves, strict=True)
            if group[SCHEDULE_KEY]["freeze_at_end"] and self.last_epoch >= c.steps
        ]

    def _apply_freeze(self) -> None:
        if not self.freeze:
            return
        frozen = set(self.frozen())
        for name, group in zip(self.names, self.view.param_groups, strict=True):
            if (name in frozen) == (name in self._frozen_here):
                continue  # unchanged since the last call: touch nothing
            for param in group["params"]:
                param.requires_grad_(name not in frozen)
            if name in frozen:
                self._frozen_here.append(name)
            else:
                self._frozen_here.remove(name)


def check_lengths(schedules: GroupSchedules, run_steps: int | None) -> None:
    """Warn about each group schedule that ends after the run (its lr never reaches its
    end factor, and ``freeze_at_end`` never freezes it), naming both numbers."""
    if run_steps is None:
        return
    for name, steps in schedules.lengths().items():
        if steps > run_steps:
            warnings.warn(
                f"parameter group {name!r}: its schedule is {steps} optimizer steps long, but "
                f"the run has {run_steps}: it never reaches its end (end_factor, "
                "freeze_at_end); shorten it or lengthen the run",
                UserWarning,
                stacklevel=2,
            )


def schedule_column(param_groups: Sequence[Mapping[str, Any]], follows: str) -> list[str] | None:
    """The group table's ``schedule`` cell of each group (``follows`` for groups without
    their own), or ``None`` when no group has a schedule of its own."""
    if not any(group.get(SCHEDULE_KEY) for group in param_groups):
        return None
    return [describe_schedule(group.get(SCHEDULE_KEY)) or follows for group in param_groups]

"""A scheduler's length against the run: left empty, filled from the trainer; given, checked.

What torch and Lightning lack: a scheduler's length (``CosineAnnealingLR``'s ``T_max``,
``OneCycleLR``'s ``total_steps``, ...) is a number written into the config, and nothing
compares it with the run. When it disagrees, training goes on silently wrong: a cosine
with ``T_max: 2`` in a 4-epoch run trains an epoch at lr 0 and then climbs back up;
``MultiStepLR`` milestones past ``max_epochs`` never act; a ``OneCycleLR`` too short stops
the run with an error midway. And the right number changes with the batch size, the
validation split, the number of DDP ranks and ``max_epochs``.

Here, for every scheduler class in ``LENGTH_ARGUMENTS``:

- a length argument left empty (``null`` in YAML, or not given where its default is
  ``None``) is filled with the run's length, ``run_length(trainer, interval)``: the
  optimizer steps of the whole run (``trainer.estimated_stepping_batches``: after DDP
  sharding, gradient accumulation and ``max_steps``) for ``scheduler_interval: step``, or
  ``trainer.max_epochs`` for ``epoch``;
- a length given that differs from the run's is a warning naming both numbers (an error
  for a ``OneCycleLR`` shorter than the run, which torch would stop at its end).

The length is filled by calling the configured scheduler callable with the length as a
keyword (``scheduler(optimizer, T_max=N)``): LightningCLI hands the ``Classifier`` a
``functools.partial`` of the class with the YAML's arguments, whose keywords a call
overrides. So the scheduler is built once, with the right length, by its own class. A
scheduler resumed from a checkpoint is built the same way and then loads its saved state,
so the length it saved wins.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

from torch.optim import lr_scheduler

from groupwise.errors import ConfigError
from groupwise.optim.cosine_annealing import CosineAnnealingLR
from groupwise.optim.warmup_linear import WarmupLinearLR

# The argument of each scheduler class that is the length of the whole schedule, in
# scheduler steps (looked up with issubclass, so subclasses are covered).
LENGTH_ARGUMENTS: dict[type, str] = {
    WarmupLinearLR: "total_steps",
    lr_scheduler.OneCycleLR: "total_steps",
    lr_scheduler.CosineAnnealingLR: "T_max",
    lr_scheduler.PolynomialLR: "total_iters",
    lr_scheduler.LinearLR: "total_iters",  # filled when empty; often a warm-up: not checked
}
UNCHECKED = (lr_scheduler.LinearLR,)
# Where a class cannot take an empty length (its argument is required), the one that can.
EMPTY_ALTERNATIVE = {lr_scheduler.CosineAnnealingLR: CosineAnnealingLR}


def run_length(trainer: Any, interval: str) -> int | None:
    """Scheduler steps in the whole run: ``trainer.estimated_stepping_batches`` (optimizer
    steps of all epochs, after DDP sharding and gradient accumulation) for ``interval ==
    "step"``, else ``trainer.max_epochs``; ``None`` when the run has no finite length."""
    if interval == "step":
        steps = trainer.estimated_stepping_batches
    else:
        steps = trainer.max_epochs if trainer.max_epochs not in (None, -1) else None
    if steps is None or steps == float("inf"):
        return None
    return int(steps)


def steps_per_epoch(trainer: Any) -> int | None:
    """Optimizer steps per training epoch, as Lightning counts them for
    ``estimated_stepping_batches`` (its training batches per epoch, after
    ``limit_train_batches`` and DDP sharding, over ``accumulate_grad_batches``, the last
    window of an epoch stepping too); ``None`` when the data has no length."""
    trainer.estimated_stepping_batches  # noqa: B018 (Lightning sets up the training data)
    batches = trainer.num_training_batches
    if batches == float("inf"):
        return None
    return math.ceil(batches / trainer.accumulate_grad_batches)


def scheduler_class(scheduler: Callable[..., Any]) -> type | None:
    """The class a scheduler callable builds: the callable itself when it is a class, or the
    class a ``functools.partial`` calls (LightningCLI's partial holds it among its positional
    arguments); ``None`` for any other callable."""
    if isinstance(scheduler, type):
        return scheduler
    if isinstance(scheduler, functools.partial):
        for candidate in (scheduler.func, *scheduler.args):
            if isinstance(candidate, type) and issubclass(candidate, lr_scheduler.LRScheduler):
                return candidate
    return None


def given_arguments(scheduler: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments a scheduler callable passes, with the class's defaults for those
    it leaves out; empty when the callable's class is unknown."""
    cls = scheduler_class(scheduler)
    if cls is None:
        return {}
    defaults = {
        name: p.default
        for name, p in inspect.signature(cls).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    bound = scheduler.keywords if isinstance(scheduler, functools.partial) else {}
    return defaults | dict(bound)


def length_argument(cls: type | None) -> str | None:
    """The name of the length argument of a scheduler class, if it has one."""
    for base, name in LENGTH_ARGUMENTS.items():
        if cls is not None and issubclass(cls, base):
            return name
    return None


def fill_length(scheduler: Callable[..., Any], length: int | None, interval: str) -> dict[str, int]:
    """The keyword to add to the scheduler call: ``{name: length}`` when the scheduler's
    length argument is left empty, else ``{}``. Raises ``ValueError`` when it is empty and
    the run has no finite length."""
    cls = scheduler_class(scheduler)
    name = length_argument(cls)
    given = given_arguments(scheduler)
    if name is None or name not in given or given[name] is not None:
        return {}
    if issubclass(cls, lr_scheduler.OneCycleLR) and given.get("epochs") is not None:
        return {}  # its length is epochs x steps_per_epoch (checked once it is built)
    if length is None:
        needs = (
            "trainer.max_epochs or trainer.max_steps"
            if interval == "step"
            else "trainer.max_epochs (scheduler_interval: epoch counts epochs)"
        )
        raise ConfigError(
            f"{cls.__name__} with {name}: null needs a finite run: set {needs}, or give {name}"
        )
    return {name: length}


def check_length(scheduler: Any, length: int | None, interval: str) -> None:
    """Warn when a built scheduler's length differs from the run's ``length`` (both numbers
    named), or when ``MultiStepLR`` milestones are at or past it; raise ``ValueError`` for a
    ``OneCycleLR`` shorter than the run."""
    if length is None:
        return
    cls = type(scheduler)
    run = f"{length} {'optimizer steps' if interval == 'step' else 'epochs'}"
    where = f"(scheduler_interval: {interval})"
    if isinstance(scheduler, lr_scheduler.MultiStepLR):
        late = [m for m in sorted(scheduler.milestones) if m >= length]
        if late:
            warnings.warn(
                f"{cls.__name__}: milestones {late} are at or past the run's {run} {where}, "
                "so they never take effect",
                UserWarning,
                stacklevel=2,
            )
        return
    name = length_argument(cls)
    if name is None or isinstance(scheduler, UNCHECKED):
        return
    value = getattr(scheduler, name)
    if value == length:
        return
    alternative = next((a for b, a in EMPTY_ALTERNATIVE.items() if cls is b), None)
    fix = f"set {name}: {length}, or " + (
        f"use groupwise.optim.{alternative.__name__} and leave {name} empty"
        if alternative is not None
        else f"leave {name} empty (null)"
    )
    message = f"{cls.__name__}: {name}={value} but the run has {run} {where}"
    if isinstance(scheduler, lr_scheduler.OneCycleLR) and value < length:
        raise ConfigError(
            f"{message}: torch stops the run with an error after step {value}; {fix} to "
            "take the run's length"
        )
    warnings.warn(f"{message}; {fix} to take the run's length", UserWarning, stacklevel=2)

"""Checks of a built learning-rate scheduler that torch does not make.

``MultiStepLR`` stores its milestones in a ``Counter``: ``[60, 30]`` or ``[30, 30]`` are
accepted silently (the second multiplies by gamma twice at once). And schedulers whose
arguments count epochs (milestones, step sizes) decay within the first epoch when stepped
per batch.
"""

from __future__ import annotations

import warnings

from torch.optim import lr_scheduler

from groupwise.errors import ConfigError

# Schedulers whose arguments are counted in epochs in the usual recipes.
EPOCH_BASED = (
    lr_scheduler.MultiStepLR,
    lr_scheduler.StepLR,
    lr_scheduler.ExponentialLR,
    lr_scheduler.ReduceLROnPlateau,
)


def check_milestones(scheduler: object) -> None:
    """``MultiStepLR`` milestones must be strictly increasing and non-negative."""
    if not isinstance(scheduler, lr_scheduler.MultiStepLR):
        return
    counts = scheduler.milestones  # a Counter, in the order the milestones were given
    written = list(counts.elements())
    if any(count > 1 for count in counts.values()) or any(
        later <= earlier for earlier, later in zip(written, written[1:], strict=False)
    ):
        raise ConfigError(
            f"MultiStepLR milestones must be strictly increasing epochs, got {written}; "
            f"e.g. {sorted(set(written))}"
        )
    if written and written[0] < 0:
        raise ConfigError(f"MultiStepLR milestones must be >= 0, got {written}")


def check_interval(scheduler: object, interval: str) -> None:
    """Warn loudly when an epoch-based scheduler is set to step after every batch."""
    if interval == "step" and isinstance(scheduler, EPOCH_BASED):
        name = type(scheduler).__name__
        detail = ""
        if isinstance(scheduler, lr_scheduler.MultiStepLR):
            milestones = sorted(scheduler.milestones)
            detail = f" its milestones {milestones} will count batches, not epochs;"
        warnings.warn(
            f"{name} is stepped after every batch (scheduler_interval: step):{detail} "
            "set model.scheduler_interval: epoch unless you mean it",
            UserWarning,
            stacklevel=2,
        )

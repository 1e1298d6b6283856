"""A linear warm-up then a linear decay of each group's own lr, written as one YAML class.

It is torch's ``SequentialLR([LinearLR(start_factor, 1, W), LinearLR(1, end_factor, T - W)],
[W])`` with ``W = round(warmup_fraction * T)``, which multiplies each group's own lr (the
groups' ratios hold, unlike ``OneCycleLR`` with one ``max_lr``). What it adds: a
``SequentialLR`` takes scheduler objects, which a YAML config cannot give, and its step
counts are absolute; here the warm-up is a fraction of ``total_steps``, and
``total_steps: null`` is filled with the run's length by the ``Classifier``
(``groupwise.optim.schedule_length``).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LinearLR, SequentialLR

from groupwise.errors import ConfigError


class WarmupLinearLR(SequentialLR):
    """Each group's lr times a factor that rises linearly from ``start_factor`` to 1 over the
    first ``warmup_fraction`` of ``total_steps``, then falls linearly to ``end_factor``.

    Args:
        optimizer: the optimizer; each group's lr at construction is its peak lr.
        total_steps: scheduler steps in the whole run (optimizer steps with
            ``scheduler_interval: step``, epochs with ``epoch``). ``None`` (YAML ``null``):
            the ``Classifier`` sets it to the run's length.
        warmup_fraction: part of the run spent warming up, in [0, 1).
        start_factor: factor of the first step, in (0, 1]; unused when the warm-up
            rounds to 0 steps.
        end_factor: factor reached at step ``total_steps``, just after the run's last
            optimizer step, so the last step trains at a small non-zero lr (as the
            fastest published trainers do), in [0, 1].
        last_epoch: as in torch.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        warmup_fraction: float = 0.2,
        start_factor: float = 0.1,
        end_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0.0 < start_factor <= 1.0:
            raise ConfigError(f"start_factor must be in (0, 1], got {start_factor}")
        if not 0.0 <= end_factor <= 1.0:
            raise ConfigError(f"end_factor must be in [0, 1], got {end_factor}")
        if total_steps is None:
            raise ConfigError(
                "WarmupLinearLR needs total_steps; under the Classifier an empty "
                "total_steps is filled with the run's length"
            )
        if total_steps < 1:
            raise ConfigError(f"total_steps must be a positive number of steps, got {total_steps}")
        self.total_steps = int(total_steps)
        self.warmup_fraction = warmup_fraction
        self.start_factor = start_factor
        self.end_factor = end_factor
        warmup = round(warmup_fraction * self.total_steps)
        decay = LinearLR(optimizer, 1.0, end_factor, max(self.total_steps - warmup, 1))
        if warmup == 0:
            schedulers, milestones = [decay], []
        else:
            schedulers = [LinearLR(optimizer, start_factor, 1.0, warmup), decay]
            milestones = [warmup]
        super().__init__(optimizer, schedulers, milestones, last_epoch)

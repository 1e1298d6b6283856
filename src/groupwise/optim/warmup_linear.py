"""A linear warm-up then a linear decay of each group's own lr, written as one YAML class.

Step for step it is torch's ``SequentialLR([LinearLR(start_factor, 1, W), LinearLR(1,
end_factor, T - W)], [W])`` with ``W = round(warmup_fraction * T)``, which multiplies each
group's own lr (the groups' ratios hold, unlike ``OneCycleLR`` with one ``max_lr``);
``tests/test_warmup_linear.py`` checks the two agree at every step (to rounding). What it adds:

- a ``SequentialLR`` takes scheduler objects, which a YAML config cannot give, and its step
  counts are absolute; here the warm-up is a fraction of ``total_steps``, and
  ``total_steps: null`` is filled with the run's length by the ``Classifier``
  (``groupwise.optim.schedule_length``);
- ``stretch``: a resumed run continued over a new length (``extend_schedule``) goes on
  from the current step's factor. The factor is a closed form of the step, so a stretch is
  three numbers in the state; a ``SequentialLR``'s children have fixed lengths and its state
  is a list of them, which a stretch would have to rebuild (and a resume to match).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from groupwise.errors import ConfigError


class WarmupLinearLR(LRScheduler):
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
        # after ``stretch``: (step, factor at that step, warm-up steps as planned)
        self.stretched_from: tuple[int, float, int] | None = None
        self.warmup_fraction = warmup_fraction
        self.start_factor = start_factor
        self.end_factor = end_factor
        super().__init__(optimizer, last_epoch)

    def stretch(self, total_steps: int) -> tuple[int, float]:
        """Continue over ``total_steps`` scheduler steps in all, from the current step on: a
        warm-up still in progress finishes as planned, then the factor falls linearly from
        its value at the current step (1 if it was still warming up) to ``end_factor`` at
        ``total_steps``. For a run resumed for more (or fewer) steps than it planned.
        Returns the step the new decay starts at and its factor there."""
        warmup = self.warmup_steps()
        start = max(self.last_epoch, warmup)
        if self.last_epoch >= self.total_steps:
            raise ConfigError(
                f"the schedule has ended (step {self.last_epoch} of {self.total_steps})"
            )
        if total_steps <= start:
            raise ConfigError(
                f"a schedule at step {self.last_epoch} (warm-up to step {warmup}) cannot be "
                f"stretched to end at step {total_steps}: it must end after step {start}"
            )
        self.stretched_from = (start, self.factor(start), warmup)
        self.total_steps = int(total_steps)
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr
        return self.stretched_from[:2]

    def warmup_steps(self) -> int:
        """Warm-up steps: ``round(warmup_fraction * total_steps)`` of the planned length."""
        if self.stretched_from is not None:
            return self.stretched_from[2]
        return round(self.warmup_fraction * self.total_steps)

    def factor(self, step: int) -> float:
        """The lr factor at scheduler step ``step`` (0 is the first optimizer step)."""
        warmup = self.warmup_steps()
        if step < warmup:
            return self.start_factor + (1.0 - self.start_factor) * step / warmup
        if self.stretched_from is not None:
            start, factor, _ = self.stretched_from
            if step < start:  # the decay as planned before the stretch
                return 1.0 + (factor - 1.0) * (step - warmup) / (start - warmup)
            span = self.total_steps - start
            return factor + (self.end_factor - factor) * min(step - start, span) / span
        decay = max(self.total_steps - warmup, 1)
        done = min(step - warmup, decay) / decay
        return 1.0 + (self.end_factor - 1.0) * done

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

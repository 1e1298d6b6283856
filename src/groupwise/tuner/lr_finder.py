"""A learning-rate range test that sweeps one multiplier over every parameter group.

At sweep step ``k`` every group trains at its configured lr times the same multiplier
``m_k``; the multipliers rise geometrically from ``min_multiplier`` to ``max_multiplier``,
so the groups' lr ratios hold at every step and the answer is one multiplier of every
group's lr (``--model.lr_multiplier``), not one lr for all groups.

What Lightning's finder (``lightning/pytorch/tuner/lr_finder.py``) gets wrong with named
groups, and what is done here instead:

- ``_exchange_scheduler`` sets every group to the same ``lr_min`` and sweeps them all
  to the same ``lr_max``: a group configured at 10x the lr is swept at 1x. Here each group
  keeps its configured lr (``initial_lr`` when the config's scheduler has already changed
  ``lr``, as a warm-up does at construction) and a ``LambdaLR`` multiplies it.
- It records only group 0's lr (``scheduler.lr[0]``), and its callback form writes the
  suggestion into every group. Here every group's lr is recorded at every step, and the
  suggestion is given as the multiplier, every group's lr and the override that sets them.
- Its divergence check compares a smoothed loss with ``4 x`` the best one, and a NaN loss
  makes that comparison false: the sweep carries on at NaN. Here a non-finite loss stops it.
- It replaces every callback by its own, so a config's weight init or frozen groups are
  not part of its sweep. Here only the callbacks that would write checkpoints, stop on the
  expected divergence or watch a validation metric that the sweep does not compute are
  left out (see ``groupwise.trainer.GroupwiseTrainer.lr_find``).
- Its suggestion is where the loss falls fastest. Where that is depends on how fast the
  sweep raises the lr: the loss falls once the lrs summed over the steps so far are large
  enough, so the answer moves with ``num_training`` and the range (on the quadratic of
  ``tests/test_lr_find.py`` it is far below the best lr). Here the suggestion is a third of
  the multiplier at which the loss diverges: the edge of stability is a property of the
  problem (``2 / curvature`` for SGD on a quadratic, whose best lr is ``1 / curvature``).
- It smooths with a causal moving average (``beta=0.98``), which lags by about 50 steps.
  Here the curve is a running median (one-step spikes, common in a sweep, are dropped)
  under a moving average run forwards and then backwards, which cancels the lag.

Reused from it: the geometric sweep; the debiased moving average and the ``4 x`` lowest
loss early stop (here also above the first step's loss, so that a loss that falls to near
0 is not stopped by noise).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities.types import LRSchedulerConfig
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch.optim.lr_scheduler import LambdaLR


def multipliers(min_multiplier: float, max_multiplier: float, num_steps: int) -> list[float]:
    """``num_steps`` multipliers from ``min_multiplier`` to ``max_multiplier`` (both included),
    evenly spaced on a log scale."""
    if not 0 < min_multiplier < max_multiplier:
        raise ValueError(
            "the sweep needs 0 < min_multiplier < max_multiplier, got "
            f"min_multiplier={min_multiplier}, max_multiplier={max_multiplier}"
        )
    if num_steps < 2:
        raise ValueError(f"num_steps must be at least 2, got {num_steps}")
    ratio = max_multiplier / min_multiplier
    return [min_multiplier * ratio ** (k / (num_steps - 1)) for k in range(num_steps)]


def smooth(values: Sequence[float], beta: float) -> list[float]:
    """The loss curve the suggestion reads and the plot draws: a running median over 5
    steps (a spike of one or two steps is dropped), then the debiased moving average
    ``beta`` run forwards and again backwards over the result, which cancels its lag
    (``beta=0``: the running median alone)."""
    if not 0 <= beta < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {beta}")
    medians = [float(np.median(values[max(k - 2, 0) : k + 3])) for k in range(len(values))]

    def forwards(xs: Sequence[float]) -> list[float]:
        average, out = 0.0, []
        for k, x in enumerate(xs):
            average = beta * average + (1 - beta) * x
            out.append(average / (1 - beta ** (k + 1)))
        return out

    return forwards(forwards(medians)[::-1])[::-1]


@dataclass
class RangeTest:
    """The sweep's record, and its suggestion.

    Attributes:
        multipliers: the multiplier of each step taken.
        losses: the training loss of each step (the mean over DDP ranks).
        lrs: each optimizer group's name -> its lr at each step, as the optimizer had it.
        configured: each group's configured lr (the lr at multiplier 1).
        num_steps, min_multiplier, max_multiplier: the sweep as planned.
        smoothing: the ``beta`` of ``smooth``.
        stop_reason: why the sweep ended before its last multiplier, or ``None``.
        warm_up: whether the config's schedule starts below the configured lrs (a warm-up,
            which the sweep does not have).
    """

    multipliers: list[float]
    losses: list[float]
    lrs: dict[str, list[float]]
    configured: dict[str, float]
    num_steps: int
    min_multiplier: float
    max_multiplier: float
    smoothing: float = 0.7
    stop_reason: str | None = None
    warm_up: bool = False

    def finite_steps(self) -> int:
        """Steps before the first non-finite loss."""
        return next(
            (k for k, x in enumerate(self.losses) if not math.isfinite(x)), len(self.losses)
        )

    @functools.cached_property
    def smoothed(self) -> list[float]:
        """``smooth`` of the losses up to the first non-finite one."""
        return smooth(self.losses[: self.finite_steps()], self.smoothing)

    @property
    def divergence(self) -> int | None:
        """The step at which the loss diverged: the first step after the smoothed loss's
        lowest point at which it climbs back above the midpoint between that lowest value
        and its first value (their geometric mean when both are positive, as a loss that
        falls by orders of magnitude needs). If it never does but the sweep was stopped
        early (a non-finite loss, or the moving average past its threshold: a jump of one
        or two steps at the end, which the running median drops), the step it stopped at;
        else ``None``."""
        stopped = len(self.losses) - 1 if self.stop_reason and self.losses else None
        curve = self.smoothed
        if not curve:
            return stopped
        lowest = int(np.argmin(curve))
        low, first = curve[lowest], curve[0]
        middle = math.sqrt(low * first) if low > 0 else (low + first) / 2
        return next((k for k in range(lowest, len(curve)) if curve[k] > middle), stopped)

    @property
    def suggestion(self) -> float | None:
        """A third of the multiplier at ``divergence``; ``None`` when the sweep did not
        diverge, or diverged in its first tenth (then it started too high to show where
        the loss falls).

        Why a third: on a quadratic, plain SGD converges for ``lr < 2 / curvature`` and
        fastest at ``1 / curvature``, half that edge. The loss is seen diverging some steps
        after the edge is passed: on the quadratic of ``tests/test_lr_find.py`` (8 seeds)
        ``divergence`` lay at 1.5-2.3x the edge, so a third of it is 1.0-1.55x the best lr.
        """
        step = self.divergence
        if step is None or step < self.num_steps // 10:
            return None
        return self.multipliers[step] / 3


class LRRangeTest(Callback):
    """Runs the sweep inside ``Trainer.fit``: replaces the config's schedulers by one that
    multiplies every group's configured lr by the step's multiplier, records every group's
    lr and the loss at each step, and stops the fit after ``num_steps`` steps (set by the
    caller as ``max_steps``), at a non-finite loss or when the loss diverges.

    Args:
        min_multiplier: the first step's multiplier of every group's configured lr.
        max_multiplier: the last step's multiplier.
        num_steps: optimizer steps in the sweep.
        early_stop_threshold: stop when the moving average of the loss exceeds this many
            times its lowest value and the first step's loss (a loss whose lowest value is
            near 0 is not stopped by noise); ``None``: only a non-finite loss stops it.
        smoothing: ``beta`` of the loss's moving averages (the early stop's, and ``smooth``).
    """

    def __init__(
        self,
        min_multiplier: float = 1e-3,
        max_multiplier: float = 100.0,
        num_steps: int = 100,
        early_stop_threshold: float | None = 4.0,
        smoothing: float = 0.7,
    ) -> None:
        self.multipliers = multipliers(min_multiplier, max_multiplier, num_steps)
        if early_stop_threshold is not None and early_stop_threshold <= 1:
            raise ValueError(f"early_stop_threshold must be above 1, got {early_stop_threshold}")
        smooth([], smoothing)  # checks its range
        self.early_stop_threshold = early_stop_threshold
        self.smoothing = smoothing
        self.losses: list[float] = []
        self.lrs: dict[str, list[float]] = {}
        self.configured: dict[str, float] = {}
        self.stop_reason: str | None = None
        self.warm_up = False  # the config's schedule starts below the configured lrs
        self._pending: torch.Tensor | None = None
        self._average = 0.0
        self._best = math.inf
        self._first: float | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the strategy has built the optimizers and the config's schedulers
        # (trainer._run: strategy.setup, then on_fit_start): the schedulers are replaced here.
        configs = []
        for index, optimizer in enumerate(trainer.optimizers):
            for number, group in enumerate(optimizer.param_groups):
                configured = group.get("initial_lr", group["lr"])
                self.warm_up = self.warm_up or group["lr"] < configured
                group["lr"] = group["initial_lr"] = configured
                self.configured[_group_name(group, index, number, trainer)] = configured
            scheduler = LambdaLR(optimizer, self.multiplier)
            configs.append(LRSchedulerConfig(scheduler, interval="step"))
        trainer.strategy.lr_scheduler_configs = configs
        self.lrs = {name: [] for name in self.configured}

    def multiplier(self, step: int) -> float:
        """The multiplier of sweep step ``step`` (the last one past the end)."""
        return self.multipliers[min(step, len(self.multipliers) - 1)]

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        index = trainer.optimizers.index(optimizer)
        for number, group in enumerate(optimizer.param_groups):
            name = _group_name(group, index, number, trainer)
            lrs = self.lrs[name]
            if len(lrs) == trainer.global_step:  # once per step, also with accumulation
                lrs.append(group["lr"])

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None:
            # Lightning divides each micro-batch's loss by accumulate_grad_batches: the sum
            # over a step's micro-batches is their mean.
            loss = loss.detach()
            self._pending = loss if self._pending is None else self._pending + loss
        if trainer.global_step == len(self.losses):
            return  # no optimizer step yet (gradient accumulation)
        value = math.nan
        if self._pending is not None:
            value = float(trainer.strategy.reduce(self._pending, reduce_op="mean"))
        self._pending = None
        self.losses.append(value)
        self._check_divergence(trainer, value)

    def _check_divergence(self, trainer: Trainer, loss: float) -> None:
        """Every rank sees the same (reduced) loss, so every rank stops at the same step."""
        step = len(self.losses) - 1
        if not math.isfinite(loss):
            self.stop_reason = f"the loss was {loss} at step {step}"
            trainer.should_stop = True
            return
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        average = self._average / (1 - self.smoothing ** (step + 1))
        threshold = self.early_stop_threshold
        if self._first is None:
            self._first = loss
        if (
            threshold is not None
            and step > 0
            and average > threshold * self._best
            and average > self._first
        ):
            self.stop_reason = (
                f"at step {step} the loss's moving average ({average:.4g}) passed {threshold:g}"
                f" x its lowest ({self._best:.4g}) and the first step's loss ({self._first:.4g})"
            )
            trainer.should_stop = True
        self._best = min(self._best, average)

    def result(self) -> RangeTest:
        steps = len(self.losses)
        return RangeTest(
            multipliers=self.multipliers[:steps],
            losses=list(self.losses),
            lrs={name: lrs[:steps] for name, lrs in self.lrs.items()},
            configured=dict(self.configured),
            num_steps=len(self.multipliers),
            min_multiplier=self.multipliers[0],
            max_multiplier=self.multipliers[-1],
            smoothing=self.smoothing,
            stop_reason=self.stop_reason,
            warm_up=self.warm_up,
        )


def _group_name(group: Mapping[str, Any], optimizer: int, number: int, trainer: Trainer) -> str:
    name = group.get("name", f"pg{number}")
    return name if len(trainer.optimizers) == 1 else f"optimizer{optimizer}/{name}"


def plot_range_test(
    test: RangeTest,
    path: str | Path,
    suggestion: float | None = None,
    override: str = "",
    title: str = "",
) -> tuple[Path, Figure]:
    """Save a PNG of the loss against the multiplier (log scale): each step's loss, the
    smoothed curve, the configured lrs (multiplier 1), the divergence and the suggestion
    (``test.suggestion`` unless given, e.g. rounded), whose legend entry gives every group's
    lr there, under the ``override`` that sets them. Returns the path and the figure."""
    figure = Figure(figsize=(8, 4.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    steps = test.finite_steps()
    xs, curve = test.multipliers[:steps], test.smoothed
    axes.plot(xs, test.losses[:steps], ".", color="0.6", markersize=4, label="loss at each step")
    axes.plot(xs, curve, color="C0", linewidth=2, label="smoothed")
    axes.axvline(1.0, color="0.4", linestyle=":", linewidth=1, label="configured lrs (x1)")
    if test.divergence is not None:
        m = test.multipliers[test.divergence]
        axes.axvline(m, color="C1", linestyle="--", linewidth=1, label=f"diverged at x{m:.3g}")
    m = test.suggestion if suggestion is None else suggestion
    if m is not None:
        lrs = "\n".join(f"  {name}: lr {lr * m:.3g}" for name, lr in test.configured.items())
        y = float(np.interp(math.log(m), np.log(xs), curve))
        axes.plot([m], [y], "o", color="C3", markersize=9, label=f"suggestion x{m:.3g}\n{lrs}")
    axes.set_xscale("log")
    if curve:
        low, first = min(curve), curve[0]
        if low > 0 and first / low > 10:  # a loss that falls by orders of magnitude
            axes.set_yscale("log")
            axes.set_ylim(low / 2, 10 * first)
        else:  # up to the divergence, so that the diverged end does not squash the rest
            end = steps if test.divergence is None else min(test.divergence + 1, steps)
            shown = [*curve[:end], *np.quantile(test.losses[:end], [0.02, 0.98])]
            margin = 0.05 * (max(shown) - min(shown))
            axes.set_ylim(min(shown) - margin, max(shown) + margin)
    axes.set_xlabel("lr multiplier (every group's configured lr x this)")
    axes.set_ylabel("training loss")
    axes.set_title(title or "learning-rate range test")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize="small", title=override or None, title_fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path, figure

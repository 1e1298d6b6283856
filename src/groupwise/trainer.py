"""Lightning's ``Trainer`` plus ``lr_find``: the ``groupwise lr_find`` subcommand.

``LightningCLI`` turns a trainer method into a subcommand (``LightningCLI.subcommands``; its
arguments become the subcommand's options), so the range test is a method here rather than
a script: ``groupwise lr_find --config C`` builds the config's net, data, groups, optimizer,
augmentation and callbacks exactly as ``groupwise fit`` does.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from groupwise.callbacks.finite_loss import FiniteLossGuard
from groupwise.callbacks.run_summary import FILENAME, RunSummary, shown, summary_text
from groupwise.optim.param_groups import format_table
from groupwise.optim.per_group import rule_optimizers, template
from groupwise.tuner.lr_finder import LRRangeTest, RangeTest, plot_range_test

# Left out of the sweep: they would save checkpoints, stop the run at the divergence the
# sweep provokes, or wait for a validation metric the sweep does not compute; RunSummary
# would end the sweep with a fit's summary ("fit done in ..."): lr_find prints its own.
SWEEP_EXCLUDED = (Checkpoint, FiniteLossGuard, EarlyStopping, RunSummary)


class GroupwiseTrainer(Trainer):
    """``lightning.pytorch.Trainer`` with ``lr_find``."""

    def lr_find(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        min_multiplier: float = 1e-3,
        max_multiplier: float = 100.0,
        num_steps: int = 100,
        early_stop_threshold: float | None = 4.0,
        smoothing: float = 0.7,
        png: str | None = None,
    ) -> RangeTest:
        """Learning-rate range test: one multiplier swept over every parameter group.

        Trains a copy of ``model`` for up to ``num_steps`` optimizer steps, at step ``k``
        with every group's configured lr times ``m_k`` (geometric from ``min_multiplier``
        to ``max_multiplier``), then prints the suggested multiplier, every group's lr at
        it, the ``--model.lr_multiplier`` override that gives them (to every group of every
        optimizer) and the config values that do the same (one per rule); draws the
        loss against the multiplier (PNG and TensorBoard), and ends with a summary
        (``lr_find done in``, the run directory, the steps, the suggestion, the plot, the
        TensorBoard command; also in ``<run directory>/summary.txt``). Nothing is
        validated and no checkpoint is written; ``model`` itself is not trained. The
        trainer has run a fit afterwards: train with a new one.

        Args:
            model: the model; a copy is trained.
            datamodule: the data.
            min_multiplier: multiplier of every group's configured lr at the first step.
            max_multiplier: multiplier at the last step.
            num_steps: optimizer steps in the sweep.
            early_stop_threshold: stop when the moving average of the loss exceeds this
                many times its lowest value (a non-finite loss always stops); null: never.
            smoothing: beta of the loss's moving averages (early stop, plot, suggestion),
                in [0, 1).
            png: where to save the plot; default ``lr_find.png`` in the run's log directory.
        """
        start = time.monotonic()
        sweep = LRRangeTest(
            min_multiplier, max_multiplier, num_steps, early_stop_threshold, smoothing
        )
        self.callbacks = [c for c in self.callbacks if not isinstance(c, SWEEP_EXCLUDED)]
        self.callbacks.append(sweep)
        self.limit_val_batches = 0
        self.num_sanity_val_steps = 0
        loop = self.fit_loop
        loop.epoch_loop.max_steps = num_steps
        loop.epoch_loop.min_steps = None
        loop.min_epochs = None
        # Enough epochs for the sweep even at one step per epoch; finite, so a schedule that
        # takes its length from the trainer can still be built before the sweep replaces it.
        loop.max_epochs = max(loop.max_epochs or 0, num_steps)
        self.fit(copy.deepcopy(model), datamodule=datamodule)

        test = sweep.result()
        run_dir = self.log_dir if self.loggers else None  # every rank: log_dir broadcasts
        if self.is_global_zero:
            self._report(test, model, png, run_dir, start)
        return test

    def _report(
        self,
        test: RangeTest,
        model: LightningModule,
        png: str | None,
        run_dir: str | None,
        start: float,
    ) -> None:
        print(
            f"\nLearning-rate range test: {len(test.losses)} of {test.num_steps} steps, "
            f"multiplier {test.min_multiplier:.3g} to {test.max_multiplier:.3g} of every "
            "group's configured lr"
        )
        if test.stop_reason:
            print(f"Stopped early: {test.stop_reason}.")
        multiplier, override = test.suggestion, ""
        if test.divergence is None:
            suggested = "none: the loss did not diverge (raise --max_multiplier)"
            print("No suggestion: the loss did not diverge. Raise --max_multiplier.")
        elif multiplier is None:
            suggested = "none: the loss diverged from the first steps (lower --min_multiplier)"
            print("No suggestion: the loss diverged from the first steps. Lower --min_multiplier.")
        else:
            diverged = test.multipliers[test.divergence]
            # rounded to the precision a range test has; every group follows it
            multiplier = float(f"{multiplier:.2g}")
            print(f"The loss diverged at multiplier {diverged:.3g}; suggested: {multiplier:g}")
            rows = [
                {"group": name, "configured lr": lr, f"lr at x{multiplier:g}": lr * multiplier}
                for name, lr in test.configured.items()
            ]
            print(format_table(rows))
            suggested = f"x{multiplier:g}"
            current = getattr(model, "lr_multiplier", None)
            if current is not None:  # a Classifier: one option scales every group's lr
                override = f"--model.lr_multiplier {current * multiplier:.6g}"
                suggested += f": {override}"
                print(f"To train at it: {override}")
                lines = config_lrs(model, current * multiplier)
                if lines:
                    print("Or in the config, with lr_multiplier 1:")
                    print("\n".join(f"  {line}" for line in lines))
        if test.warm_up:
            print(
                "Note: the config's schedule warms up to these lrs; the sweep does not, and a "
                "warm-up can let a recipe train well above the suggestion (see docs/tuning.md)."
            )
        path = Path(png) if png else Path(run_dir or self.default_root_dir) / "lr_find.png"
        path, figure = plot_range_test(test, path, multiplier, override)
        self._log_sweep(test, figure, multiplier)
        steps = (
            f"{len(test.losses)} of {test.num_steps}, multiplier {test.min_multiplier:.3g} to"
            f" {test.max_multiplier:.3g}"
        )
        rows = [("steps", steps), ("suggested", suggested), ("plot", shown(path))]
        text = summary_text("lr_find", time.monotonic() - start, run_dir, rows)
        if run_dir is not None:
            (Path(run_dir) / FILENAME).write_text(text)
        sys.stdout.flush()  # the report above comes first, also where stdout is a pipe
        rank_zero_info(text.rstrip("\n"))

    def _log_sweep(self, test: RangeTest, figure: Any, multiplier: float | None) -> None:
        """Each step's multiplier, loss, smoothed loss and group lrs, and the figure."""
        smoothed = test.smoothed
        for logger in self.loggers:
            for k, m in enumerate(test.multipliers):
                metrics = {"lr_find/multiplier": m, "lr_find/loss": test.losses[k]}
                if k < len(smoothed):
                    metrics["lr_find/loss_smoothed"] = smoothed[k]
                metrics |= {f"lr_find/lr/{name}": lrs[k] for name, lrs in test.lrs.items()}
                logger.log_metrics(metrics, step=k)
            if multiplier is not None:
                logger.log_metrics({"lr_find/suggested_multiplier": multiplier}, step=0)
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure("lr_find", figure, global_step=0)
            logger.finalize("success")  # the fit closed it: flush what was added since


def config_lrs(model: LightningModule, multiplier: float) -> list[str]:
    """The config values that give every group its lr times ``multiplier``: the model's
    optimizer's lr, and each rule's own ``lr`` or its own optimizer's lr (one value per
    rule, however many groups it expands into; ``lr_scale`` is relative and stays)."""
    base = template(model.optimizer).defaults.get("lr")
    lines = [f"model.optimizer lr {base * multiplier:g}"] if base else []
    rules = model.param_groups
    own = rule_optimizers(rules)
    for rule in rules:
        name = rule.get("name", "?")
        if "lr" in rule:
            lines.append(f"rule {name!r}: lr {rule['lr'] * multiplier:g}")
        elif name in own:
            lr = template(own[name]).defaults.get("lr")
            if lr:
                lines.append(f"rule {name!r}: optimizer lr {lr * multiplier:g}")
    return lines

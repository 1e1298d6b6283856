"""One trial of a sweep: a real ``groupwise fit`` per seed, in the trial's own run directory.

The fit runs in the worker's process through the CLI's ``run`` (handed in by
``groupwise.cli``, which this package does not import), with ``--ckpt_path last``: a trial
that Optuna retries after its worker died (``RetryHeartbeatStaleTrialCallback``) gets the
run directory of the trial it retries, so its fit resumes from that trial's ``last.ckpt``
the way a resumed ``fit`` does. A seed whose fit finished leaves ``result.json`` and is not
trained again. What Optuna lacks and is here: the pruning callback (optuna-integration's
``PyTorchLightningPruningCallback`` is another package, pinned to other Lightning releases)
and the mapping from a trial to its config file and run directory.
"""

from __future__ import annotations

import json
import math
import statistics
import traceback
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import yaml
from lightning.pytorch.callbacks import Callback

from groupwise.errors import ConfigError, UserError, did_you_mean
from groupwise.sweep.space import Space, apply, suggest


class TrialFailed(Exception):
    """A trial's fit failed (NaN loss, a sampled value the config refuses); the sweep goes on."""


class MetricMissing(ConfigError):
    """The metric the sweep optimizes was never logged: every trial would fail the same way."""


class ReportMetric(Callback):
    """Report ``metric`` after each validation to the Optuna trial and stop a pruned one.

    Args:
        trial: The trial being run.
        metric: A logged metric, e.g. ``val/acc``.
        first_step: The step of epoch 0 (with repeats, seed k reports at k x max_epochs + epoch).
    """

    def __init__(self, trial: optuna.Trial, metric: str, first_step: int = 0) -> None:
        self.trial = trial
        self.metric = metric
        self.first_step = first_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            logged = sorted(trainer.callback_metrics)
            raise MetricMissing(
                f"--metric {self.metric!r} is not logged{did_you_mean(self.metric, logged)};"
                f" logged: {logged}"
            )
        epoch = trainer.current_epoch
        self.trial.report(float(value), self.first_step + epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {epoch}: {self.metric} {float(value):.4f}"
            )


@dataclass
class TrialSetup:
    """What every trial of a sweep shares."""

    fit: Callable[..., Any]  # groupwise.cli.run
    config: dict[str, Any]  # the complete fit config
    space: Space
    sweep_dir: Path
    metric: str
    repeats: int


def run_dir_of(sweep_dir: Path, trial: optuna.Trial) -> Path:
    """``<sweep>/trial_NNNN`` for a new trial; a retried trial's ``run_dir`` attribute,
    which ``RetryHeartbeatStaleTrialCallback`` copies from the trial it retries."""
    return Path(trial.user_attrs.get("run_dir") or sweep_dir / f"trial_{trial.number:04d}")


def base_seed(config: Mapping[str, Any]) -> int:
    seed = config.get("seed_everything")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def objective(setup: TrialSetup, trial: optuna.Trial) -> float:
    """Train the trial's config once per seed; the mean of the final ``metric``."""
    values = suggest(trial, setup.space)
    run_dir = run_dir_of(setup.sweep_dir, trial)
    if "run_dir" in trial.user_attrs:
        print(f"sweep: trial {trial.number} retries {run_dir.name}: its fit resumes")
    run_dir.mkdir(parents=True, exist_ok=True)
    trial.set_user_attr("run_dir", str(run_dir))
    config_file = run_dir / "config.yaml"
    config_file.write_text(yaml.safe_dump(apply(setup.config, values), sort_keys=False))
    results = []
    epochs = setup.config.get("trainer", {}).get("max_epochs") or 0
    for repeat in range(setup.repeats):
        seed = base_seed(setup.config) + repeat
        seed_dir = run_dir if setup.repeats == 1 else run_dir / f"seed_{seed}"
        report = ReportMetric(trial, setup.metric, first_step=repeat * epochs)
        results.append(fit_once(setup, trial, config_file, seed_dir, seed, report))
    trial.set_user_attr("values", results)
    if len(results) > 1:
        trial.set_user_attr("std", statistics.stdev(results))
    return statistics.fmean(results)


def fit_once(
    setup: TrialSetup,
    trial: optuna.Trial,
    config_file: Path,
    seed_dir: Path,
    seed: int,
    report: ReportMetric,
) -> float:
    """One seed's fit, resumed from its ``last.ckpt`` when there is one; its final metric
    (also in ``<seed_dir>/result.json``, which a retried trial reads instead of training)."""
    done = seed_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())["value"]
    args = [
        "fit",
        "--config", str(config_file),
        "--trainer.default_root_dir", str(seed_dir),
        "--seed_everything", str(seed),
        "--ckpt_path", "last",
    ]  # fmt: skip
    try:
        with warnings.catch_warnings():  # the worker's own argv is not the fit's: known
            warnings.filterwarnings("ignore", "LightningCLI's args parameter is intended")
            cli = setup.fit(
                args,
                trainer_defaults={"callbacks": [report]},
                parser_kwargs={"exit_on_error": False},
            )
    except (optuna.TrialPruned, MetricMissing):
        raise
    except (UserError, ArgumentError) as error:  # jsonargparse's errors are argparse's
        fail(trial, seed_dir, str(error).strip())
    except Exception as error:  # a bug: recorded with its traceback, the sweep goes on
        (seed_dir / "error.txt").write_text(traceback.format_exc())
        fail(trial, seed_dir, f"{type(error).__name__}: {error} (traceback: {seed_dir}/error.txt)")
    value = cli.trainer.callback_metrics.get(setup.metric)
    if value is None:
        raise MetricMissing(f"--metric {setup.metric!r} was not logged by the fit in {seed_dir}")
    value = float(value)
    if not math.isfinite(value):
        fail(trial, seed_dir, f"{setup.metric} is {value}")
    done.write_text(json.dumps({"value": value, "seed": seed}))
    return value


def fail(trial: optuna.Trial, seed_dir: Path, message: str) -> None:
    trial.set_user_attr("error", message)
    print(f"sweep: trial {trial.number} failed ({seed_dir}): {message}")
    raise TrialFailed(message)

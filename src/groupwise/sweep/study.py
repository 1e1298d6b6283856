"""The study of a sweep: its storage, sampler and pruner, and the loop of one worker.

Optuna keeps the study in a database (``RDBStorage``: an SQLite file in the sweep
directory by default, or any URL SQLAlchemy takes, e.g. PostgreSQL for several machines);
its heartbeat marks a trial whose worker died as failed and
``RetryHeartbeatStaleTrialCallback`` queues it again. What Optuna lacks and is here: a
target number of *finished* trials shared by every worker and every run of the command
(``Study.optimize``'s ``n_trials`` counts one call's trials), where a trial that failed by
itself counts and a trial whose worker died does not (its retry does).
"""

from __future__ import annotations

import inspect
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from groupwise.errors import ConfigError, did_you_mean


def storage(url: str, heartbeat: int, max_retries: int | None) -> RDBStorage:
    """Optuna's database storage at ``url`` with the heartbeat every ``heartbeat`` seconds:
    a running trial silent for twice that is failed and queued again."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        try:
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retries, inherit_intermediate_values=True
                ),
            )
        except (ValueError, ImportError) as error:
            raise ConfigError(f"--storage {url!r}: {error}") from None


def named(module: Any, kind: str, name: str, options: str | None, seed: int | None) -> Any:
    """``module.<name>(**options)``: a sampler or pruner of Optuna by its class name, with
    ``seed`` when it takes one and ``options`` (a JSON object) does not set it."""
    choices = [n for n in module.__all__ if n.endswith(kind.capitalize())]
    if name not in choices:
        raise ConfigError(
            f"--{kind} {name!r} is not Optuna's{did_you_mean(name, choices)}; valid: {choices}"
        )
    try:
        kwargs = json.loads(options) if options else {}
    except json.JSONDecodeError as error:
        raise ConfigError(f"--{kind}_args {options!r} is not JSON: {error}") from None
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--{kind}_args must be a JSON object, not {options!r}")
    cls = getattr(module, name)
    if seed is not None and "seed" in inspect.signature(cls).parameters:
        kwargs.setdefault("seed", seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--{kind} {name} with {kwargs}: {error}") from None


@dataclass
class Counts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # failed by themselves (recorded with a message)
    running: int = 0
    waiting: int = 0

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed


def counts(trials: list[FrozenTrial]) -> Counts:
    """The trials by state; a trial failed by the heartbeat (its worker died) is not counted."""
    found = Counts()
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            found.complete += 1
        elif trial.state == TrialState.PRUNED:
            found.pruned += 1
        elif trial.state == TrialState.FAIL and "error" in trial.user_attrs:
            found.failed += 1
        elif trial.state == TrialState.RUNNING:
            found.running += 1
        elif trial.state == TrialState.WAITING:
            found.waiting += 1
    return found


def progress_line(study: optuna.Study, target: int, metric: str) -> str:
    """``sweep NAME: 3/8 done (2 complete, 1 pruned, 0 failed), 1 running; best ...``"""
    trials = study.get_trials(deepcopy=False)
    c = counts(trials)
    line = (
        f"sweep {study.study_name}: {c.done}/{target} done ({c.complete} complete, {c.pruned}"
        f" pruned, {c.failed} failed), {c.running} running"
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        line += f"; best {metric} {best.value:.4f} (trial {best.number})"
    return line


def work(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    target: int,
    metric: str,
    poll: float,
    catch: tuple[type[Exception], ...],
) -> None:
    """Run trials until ``target`` are done in the study (by any worker). While the rest
    are running elsewhere, wait: one of them may be a dead worker's, to be retried here
    once the heartbeat marks it stale."""
    print(progress_line(study, target, metric), flush=True)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            fail_stale_trials(study)
        c = counts(study.get_trials(deepcopy=False, states=None))
        if c.done >= target:
            return
        if c.done + c.running >= target:
            time.sleep(poll)
            continue
        study.optimize(objective, n_trials=1, catch=catch)
        print(progress_line(study, target, metric), flush=True)


def check_same_space(study: optuna.Study, space_record: dict[str, str], where: Path | str) -> None:
    """The study remembers its space; another space on the same study is an error."""
    old = study.user_attrs.get("space")
    if old is None:
        study.set_user_attr("space", space_record)
    elif old != space_record:
        changed = sorted(k for k in {*old, *space_record} if old.get(k) != space_record.get(k))
        raise ConfigError(
            f"study {study.study_name!r} in {where} was made with another space: {changed}"
            f" differ (was {[old.get(k) for k in changed]}, now"
            f" {[space_record.get(k) for k in changed]}); give the old space file, or another"
            " --dir or --study_name for a new study"
        )

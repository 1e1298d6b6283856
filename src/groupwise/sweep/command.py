"""``groupwise sweep``: search over config values with Optuna, each trial a real ``fit``.

    groupwise sweep --config configs/lenet.yaml --space sweeps/lenet_groups.yaml --trials 20

Any other argument goes to every trial's ``fit`` (``--trainer.max_epochs 4``,
``--data.data_dir DIR``). The same command again continues the study (its trials are in
the database); ``--workers N`` starts N worker processes on this machine, and the same
command on other machines with one ``--storage`` URL adds their workers to the study.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml

from groupwise.errors import ConfigError
from groupwise.sweep import report, study, trial
from groupwise.sweep.space import load_space


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="groupwise sweep",
        allow_abbrev=False,
        description="An Optuna study over config values; each trial a `groupwise fit`."
        " Other arguments go to every trial's fit.",
    )
    p.add_argument("--config", "-c", action="append", required=True, help="fit's config file(s)")
    p.add_argument("--space", required=True, help="YAML: config key -> distribution")
    p.add_argument("--trials", type=int, default=20, help="finished trials the study ends with")
    p.add_argument("--dir", help="sweep directory (default lightning_logs/sweep-<study_name>)")
    p.add_argument("--study_name", help="default: the space file's name without .yaml")
    p.add_argument("--storage", help="database URL (default sqlite:///<dir>/study.db)")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--repeats", type=int, default=1, help="seeds per configuration (mean)")
    p.add_argument("--metric", default="val/acc", help="logged metric, reported every epoch")
    p.add_argument("--direction", default="maximize", choices=["maximize", "minimize"])
    p.add_argument("--sampler", default="TPESampler", help="an optuna.samplers class")
    p.add_argument("--sampler_args", help="JSON, e.g. '{\"n_startup_trials\": 4}'")
    p.add_argument("--pruner", default="MedianPruner", help="an optuna.pruners class")
    p.add_argument("--pruner_args", help="JSON, e.g. '{\"n_warmup_steps\": 2}'")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--heartbeat", type=int, default=60, help="seconds; a trial silent for"
                   " twice this is taken as dead and retried")  # fmt: skip
    p.add_argument("--max_retries", type=int, default=3, help="retries of a dead worker's trial")
    return p


def main(argv: Sequence[str], fit: Callable[..., Any]) -> None:
    """``groupwise sweep ARGV``; ``fit`` is ``groupwise.cli.run``."""
    args, fit_args = parser().parse_known_args(list(argv))
    for name in ("trials", "workers", "repeats", "heartbeat"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, not {getattr(args, name)}")
    name = args.study_name or Path(args.space).stem
    sweep_dir = Path(args.dir or Path("lightning_logs") / f"sweep-{name}").absolute()
    config = complete_config(fit, args.config, fit_args)
    space = load_space(args.space, config)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    url = args.storage or f"sqlite:///{sweep_dir / 'study.db'}"
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the progress line says it all
    the_study = optuna.create_study(
        storage=study.storage(url, args.heartbeat, args.max_retries),
        study_name=name,
        direction=args.direction,
        sampler=study.named(optuna.samplers, "sampler", args.sampler, args.sampler_args, args.seed),
        pruner=study.named(optuna.pruners, "pruner", args.pruner, args.pruner_args, None),
        load_if_exists=True,
    )
    if the_study.direction.name.lower() != args.direction:
        raise ConfigError(
            f"study {name!r} in {url} maximizes or minimizes the other way"
            f" ({the_study.direction.name.lower()}); --direction {args.direction} differs"
        )
    study.check_same_space(the_study, {k: repr(d) for k, d in space.items()}, url)
    if args.workers > 1:
        run_workers(argv, args.workers)
    else:
        setup = trial.TrialSetup(fit, config, space, sweep_dir, args.metric, args.repeats)
        study.work(
            the_study,
            lambda t: trial.objective(setup, t),
            args.trials,
            args.metric,
            poll=min(args.heartbeat, 5),
            catch=(trial.TrialFailed,),
        )
    print(report.write_report(the_study, sweep_dir, args.metric))
    print(f"sweep: table, best.yaml and plots in {sweep_dir}")


def complete_config(fit: Callable[..., Any], configs: list[str], fit_args: list[str]) -> dict:
    """The whole ``fit`` config of ``--config`` files and other arguments, as ``fit
    --print_config`` shows it (every default filled in); a bad one is one ``ConfigError``."""
    argv = ["fit", *[a for c in configs for a in ("--config", c)], *fit_args, "--print_config"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            fit(argv, parser_kwargs={"exit_on_error": False})
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise ConfigError(f"the fit config is not valid: {out.getvalue()}") from None
    except argparse.ArgumentError as error:
        raise ConfigError(f"the fit config is not valid: {error}") from None
    config = yaml.safe_load(out.getvalue())
    config.pop("ckpt_path", None)  # each trial's fit gets --ckpt_path last
    return config


def run_workers(argv: Sequence[str], workers: int) -> None:
    """``workers`` processes of this command with ``--workers 1``, waited for."""
    argv = list(argv)
    for flag in ("--workers",):
        while flag in argv:
            i = argv.index(flag)
            del argv[i : i + 2]
        argv = [a for a in argv if not a.startswith(flag + "=")]
    command = [sys.executable, "-m", "groupwise", "sweep", *argv, "--workers", "1"]
    procs = [subprocess.Popen(command, env=dict(os.environ)) for _ in range(workers)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(max(codes))

"""What a sweep shows: the table of trials, ``best.yaml``, Optuna's plots as PNG and
TensorBoard's HParams view, all in the sweep directory and linked from ``summary.md``.

The plots are Optuna's matplotlib visualisations; the HParams sessions are written with
torch's TensorBoard summary functions, one run ``<trial>/hparams`` per finished trial (its
values and final metric) beside the trial's own Lightning runs (``<trial>/lightning_logs``,
the per-group curves).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402
from optuna.visualization import matplotlib as plots  # noqa: E402

from groupwise.sweep.space import short_names  # noqa: E402

PLOTS = {
    "history.png": ("optimization history", plots.plot_optimization_history),
    "importances.png": ("parameter importances", plots.plot_param_importances),
    "parallel_coordinate.png": ("parallel coordinates", plots.plot_parallel_coordinate),
}


def state_of(trial: FrozenTrial, trials: list[FrozenTrial]) -> str:
    """The trial's state; a trial failed by the heartbeat says which trial retried it."""
    state = trial.state.name
    if trial.state == TrialState.FAIL and "error" not in trial.user_attrs:
        retries = [
            t.number for t in trials if trial.number in t.system_attrs.get("retry_history", [])
        ]
        return f"STOPPED (retried as {retries[0]})" if retries else "STOPPED"
    return state


def metric_cell(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        std = trial.user_attrs.get("std")
        return f"{trial.value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
    if trial.intermediate_values:
        step = max(trial.intermediate_values)
        return f"({trial.intermediate_values[step]:.4f} at step {step})"
    return ""


def table(study: optuna.Study, sweep_dir: Path, metric: str) -> str:
    """A Markdown table: trial, its values, metric, state, epochs reported, run directory,
    message."""
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(k for t in trials for k in t.params))
    names = short_names(keys)
    header = ["trial", *[names[k] for k in keys], metric, "state", "reports", "run", "message"]
    rows = [header, ["---"] * len(header)]
    for t in trials:
        run = t.user_attrs.get("run_dir", "")
        rows.append(
            [
                str(t.number),
                *[cell(t.params.get(k, "")) for k in keys],
                metric_cell(t),
                state_of(t, trials),
                str(len(t.intermediate_values)),
                os.path.relpath(run, sweep_dir) if run else "",
                t.user_attrs.get("error", "").splitlines()[0] if t.user_attrs.get("error") else "",
            ]
        )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename: workers may write the same report."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def write_plots(study: optuna.Study, sweep_dir: Path) -> dict[str, str]:
    """Each of Optuna's plots as a PNG: file name -> "" when written, else why not."""
    notes = {}
    for name, (title, plot) in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
            figure = axes.flatten()[0].figure if hasattr(axes, "flatten") else axes.figure
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            figure.savefig(sweep_dir / name, dpi=80)
            matplotlib.pyplot.close(figure)
            notes[name] = ""
        except (ValueError, RuntimeError, ZeroDivisionError, ImportError) as error:
            notes[name] = f"{title} not drawn: {error}"
    return notes


def write_hparams(trial: FrozenTrial, metric: str, names: dict[str, str]) -> None:
    """The trial's values and metric as a TensorBoard HParams session in ``<run>/hparams``."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    run_dir = trial.user_attrs.get("run_dir")
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED) or not run_dir:
        return
    where = Path(run_dir) / "hparams"
    if where.exists():
        return
    if trial.state == TrialState.COMPLETE:
        value = trial.value
    else:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    if value is None or not math.isfinite(value):
        return
    values = {names.get(k, k): v for k, v in trial.params.items()}
    values["state"] = trial.state.name
    with SummaryWriter(log_dir=str(where)) as writer:
        for summary in hparams(values, {metric: value}):
            writer.file_writer.add_summary(summary)
        writer.add_scalar(metric, value, 0)


def write_report(study: optuna.Study, sweep_dir: Path, metric: str) -> str:
    """Write ``summary.md``, ``best.yaml``, the PNGs and the HParams runs; the text to print."""
    trials = study.get_trials(deepcopy=False)
    names = short_names(list(dict.fromkeys(k for t in trials for k in t.params)))
    for trial in trials:
        write_hparams(trial, metric, names)
    notes = write_plots(study, sweep_dir)
    best = best_trial(study)
    lines = [f"# Sweep {study.study_name}", "", table(study, sweep_dir, metric), ""]
    if best is not None:
        source = Path(best.user_attrs["run_dir"]) / "config.yaml"
        shutil.copyfile(source, sweep_dir / "best.yaml")
        lines.append(
            f"Best: trial {best.number}, {metric} {best.value:.4f}, {best.params};"
            f" its config: best.yaml (`groupwise fit --config {sweep_dir / 'best.yaml'}`)"
        )
    else:
        lines.append("No trial has completed yet.")
    lines += [""] + [
        f"![{PLOTS[n][0]}]({n})" if not why else f"({why})" for n, why in notes.items()
    ]
    lines += [
        "",
        f"TensorBoard (HParams tab and each trial's curves): tensorboard --logdir {sweep_dir}",
    ]
    text = "\n".join(lines) + "\n"
    write_atomic(sweep_dir / "summary.md", text)
    return text

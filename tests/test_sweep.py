"""`groupwise sweep` end to end on fabricated data: the table, best.yaml (a fit of it gives
the trial's metric), Optuna's PNGs, TensorBoard's HParams runs; the same command again
continues the study; a bad space file is one message before any trial; a NaN trial is
recorded as failed with its message while the others finish; pruning stops a trial that
is clearly worse (slow). A rule option's typo: tests/test_sweep_properties.py."""

import json
from pathlib import Path

import optuna
import pytest
from cli_run import LENET, f32, groupwise, quick, scalars, tensorboard_hparams

LR = "model.optimizer.init_args.lr"
SCALE = "model.param_groups.classifier.lr_scale"


def sweep(data_dir: Path, root: Path, space: dict, *extra: str) -> object:
    """`groupwise sweep` of the LeNet config on the fabricated images into ``root/sweep``."""
    space_file = root / "space.yaml"
    space_file.write_text(json.dumps(space))  # JSON is YAML
    return groupwise(
        "sweep", "--config", LENET, "--space", str(space_file), "--dir", str(root / "sweep"),
        *quick(data_dir, root / "unused"), "--trainer.max_epochs", "2", *extra,
    )  # fmt: skip


def load_study(root: Path) -> optuna.Study:
    return optuna.load_study(study_name="space", storage=f"sqlite:///{root}/sweep/study.db")


@pytest.mark.slow  # ~35 s on 2 cores: three trials' fits and a continued study
def test_sweep_writes_the_table_best_yaml_plots_and_hparams_and_continues(data_dir, tmp_path):
    space = {LR: {"log_float": [0.01, 0.1]}, SCALE: {"float": [1, 10]}}
    done = sweep(data_dir, tmp_path, space, "--trials", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "sweep"
    study = load_study(tmp_path)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    summary = (out / "summary.md").read_text()
    for t in trials:
        row = f"| {t.number} | {t.params[LR]:.4g} | {t.params[SCALE]:.4g} | {t.value:.4f} |"
        assert row in summary and row in done.stdout
        hparams = tensorboard_hparams(out / f"trial_{t.number:04d}" / "hparams")
        assert hparams == {"lr": t.params[LR], "lr_scale": t.params[SCALE], "state": "COMPLETE"}
    for png in ("history.png", "importances.png", "parallel_coordinate.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and f"]({png})" in summary
    # best.yaml as is: a fit of it ends with the best trial's val/acc
    refit = groupwise("fit", "--config", str(out / "best.yaml"),
                      "--trainer.default_root_dir", str(tmp_path / "refit"))  # fmt: skip
    assert refit.returncode == 0, refit.stderr[-3000:]
    val_acc = scalars(tmp_path / "refit/lightning_logs/version_0")["val/acc"]
    assert val_acc[-1][1] == f32([study.best_value])[0]
    # the command again with --trials 3: the study goes on with one more trial, none re-run
    more = sweep(data_dir, tmp_path, space, "--trials", "3")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "sweep space: 2/3 done (2 complete" in more.stdout
    assert [t.state.name for t in load_study(tmp_path).get_trials()] == ["COMPLETE"] * 3
    for number in range(3):  # each trial's fit ran once
        runs = sorted(p.name for p in (out / f"trial_{number:04d}/lightning_logs").iterdir())
        assert runs == ["version_0"]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (
            {"model.optimizer.init_args.lrr": {"float": [0, 1]}},
            "model.optimizer.init_args.lrr: 'model.optimizer.init_args.lrr' is no key of the"
            " config (did you mean 'model.optimizer.init_args.lr'?)",
        ),
    ],
)
def test_a_bad_space_file_is_one_message_before_any_trial(data_dir, tmp_path, space, message):
    done = sweep(data_dir, tmp_path, space)
    assert done.returncode == 2
    assert done.stderr.count("error:") == 1 and message in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "sweep").exists()


@pytest.mark.slow  # three fits, ~25 s
def test_a_non_finite_trial_fails_with_its_message_and_a_clearly_worse_one_is_pruned(
    data_dir, tmp_path
):
    """Enqueued values (Optuna's enqueue_trial): a learning lr, lr 0 (the net never moves:
    its val/loss stays at the first epoch's, above the first trial's) and an lr that makes
    the loss NaN."""
    storage = f"sqlite:///{tmp_path}/sweep/study.db"
    (tmp_path / "sweep").mkdir()
    study = optuna.create_study(storage=storage, study_name="space", direction="minimize")
    for lr in (0.01, 0.0, 1.0e8):
        study.enqueue_trial({LR: lr})
    space = {LR: {"float": [0.0, 1.0e8]}}
    done = sweep(
        data_dir, tmp_path, space, "--trials", "3", "--metric", "val/loss",
        "--direction", "minimize", "--pruner_args", '{"n_startup_trials": 1}',
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    first, flat, nan = load_study(tmp_path).get_trials()
    assert (first.state.name, flat.state.name, nan.state.name) == ("COMPLETE", "PRUNED", "FAIL")
    assert list(flat.intermediate_values) == [0]  # stopped after its first epoch
    assert flat.intermediate_values[0] > first.intermediate_values[0]
    assert nan.user_attrs["error"].startswith("training loss is inf at epoch 0")
    summary = (tmp_path / "sweep/summary.md").read_text()
    assert "| PRUNED |" in summary and nan.user_attrs["error"].splitlines()[0] in summary
    assert "1 pruned, 1 failed" in done.stdout


def test_another_space_on_the_same_study_is_an_error_naming_the_keys():
    from groupwise.errors import ConfigError
    from groupwise.sweep.study import check_same_space

    study = optuna.create_study(study_name="s")
    check_same_space(study, {LR: "FloatDistribution(0.01, 0.1)"}, "memory")
    check_same_space(study, {LR: "FloatDistribution(0.01, 0.1)"}, "memory")  # the same: fine
    with pytest.raises(ConfigError, match=r"another space: \['model.optimizer.init_args.lr'\]"):
        check_same_space(study, {LR: "FloatDistribution(0.01, 0.5)"}, "memory")

"""`--ckpt_path last`: which checkpoint it takes, with any logger or none, and when several
runs share one directory.

"last" means the most recently written ``last.ckpt`` of an earlier run of *this* config
(the same model and data settings and the same seed) in the directory where this run's
checkpoints go: ``<logger save_dir>/<logger name>/*/checkpoints/`` (``lightning_logs/
version_*`` for the default TensorBoard logger), ``<default_root_dir>/checkpoints/``
without a logger, or ``last_checkpoint.dirpath`` when set. Runs of other configs are
passed over, by name; with no run of this config the run starts afresh.
"""

import argparse
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from cli_run import LENET, groupwise, load, quick
from fault_injection import RecordTrainStart
from file_snapshot import assert_kept, snapshot

from groupwise.checkpoint import CheckpointError
from groupwise.cli import run

ONE_EPOCH = ["--trainer.max_epochs", "1"]
RECORD = f"--trainer.callbacks+={json.dumps({'class_path': 'fault_injection.RecordTrainStart'})}"


def fit(data_dir: Path, root: Path, *args: str):
    return run(["fit", "--config", LENET, *quick(data_dir, root, *args)])


def resumed_from(cli) -> dict:
    """What the run started training from (RecordTrainStart)."""
    (record,) = [c.record for c in cli.trainer.callbacks if isinstance(c, RecordTrainStart)]
    return record


def assert_starts_from(record: dict, checkpoint: Path) -> None:
    saved = load(checkpoint)
    assert record["global_step"] == saved["global_step"] > 0
    for key, value in saved["state_dict"].items():
        assert torch.equal(record["state_dict"][key], value), key


def logger_arg(kind: str, root: Path, version: str) -> list[str]:
    if kind == "none":
        return ["--trainer.logger", "false"]
    if kind == "csv":
        spec = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(root)},
        }
    else:
        spec = {
            "class_path": "plain_logger.NoRootDirLogger",
            "init_args": {"save_dir": str(root), "version": version},
        }
    return ["--trainer.logger", json.dumps(spec)]


@pytest.mark.parametrize("logger", ["none", "csv", "no root_dir"])
def test_ckpt_path_last_finds_the_last_ckpt_with_any_logger(data_dir, tmp_path, caplog, logger):
    fit(data_dir, tmp_path, *ONE_EPOCH, *logger_arg(logger, tmp_path, "first"))
    (last,) = tmp_path.rglob("last.ckpt")
    expected = {
        "none": tmp_path / "checkpoints/last.ckpt",
        "csv": tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt",
        "no root_dir": tmp_path / "runs/first/checkpoints/last.ckpt",
    }[logger]
    assert last == expected
    first = tmp_path / "first.ckpt"  # without a logger the resumed run overwrites last.ckpt
    first.write_bytes(last.read_bytes())
    cli = fit(
        data_dir, tmp_path, "--trainer.max_epochs", "2", *logger_arg(logger, tmp_path, "second"),
        "--ckpt_path", "last", RECORD,
    )  # fmt: skip
    assert f"Resuming from {last}" in caplog.text
    assert_starts_from(resumed_from(cli), first)


LR = "--model.optimizer.init_args.lr"
TORCHVISION_NET = '{"class_path": "torchvision.models.resnet18", "init_args": {"num_classes": 10}}'


@pytest.fixture(scope="module")
def three_runs(data_dir, tmp_path_factory) -> Path:
    """One lightning_logs/ with, oldest first: version_0 the LeNet config (lr 0.005, seed
    0), version_1 at lr 0.01, version_2 with seed 1; one epoch each."""
    root = tmp_path_factory.mktemp("three_runs")
    for other in ([], [LR, "0.01"], ["--seed_everything", "1"]):
        fit(data_dir, root, *ONE_EPOCH, *other)
    return root


def runs_copy(three_runs: Path, tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(three_runs, root)  # copies the mtimes too: the same newest
    return root


def test_ckpt_path_last_takes_this_configs_run_not_newer_runs_of_other_configs(
    data_dir, three_runs, tmp_path, caplog
):
    root = runs_copy(three_runs, tmp_path)
    cli = fit(data_dir, root, "--trainer.max_epochs", "2", "--ckpt_path", "last", RECORD)
    run_dir = root / "lightning_logs"
    taken = run_dir / "version_0/checkpoints/last.ckpt"
    assert_starts_from(resumed_from(cli), taken)
    assert f"Resuming from {taken}: the newest last.ckpt of this config under {run_dir}" in (
        caplog.text
    )
    assert (
        f"not {run_dir}/version_2/checkpoints/last.ckpt: another config"
        " (seed_everything: 1 there, 0 here)" in caplog.text
    )
    assert (
        f"not {run_dir}/version_1/checkpoints/last.ckpt: another config"
        " (model.optimizer.init_args.lr: 0.01 there, 0.005 here)" in caplog.text
    )


def test_ckpt_path_last_with_no_run_of_this_config_starts_a_new_run_naming_the_others(
    data_dir, three_runs, tmp_path, caplog
):
    """Another config file (a copy of lenet.yaml) and another lr: no run of these config
    files is there, so a new run starts (with the same file it stops: see below)."""
    root = runs_copy(three_runs, tmp_path)
    config = tmp_path / "lenet_copy.yaml"
    shutil.copy(LENET, config)
    args = quick(data_dir, root, *ONE_EPOCH, LR, "0.02", "--ckpt_path", "last", RECORD)
    cli = run(["fit", "--config", str(config), *args])
    assert resumed_from(cli)["global_step"] == 0
    run_dir = root / "lightning_logs"
    assert (
        f"--ckpt_path last: no earlier run of this config under {run_dir}: starting a new run."
        in caplog.text
    )
    for version, lr in ((0, 0.005), (1, 0.01), (2, 0.005)):
        assert (
            f"not {run_dir}/version_{version}/checkpoints/last.ckpt: another config"
            f" (model.optimizer.init_args.lr: {lr} there, 0.02 here" in caplog.text
        )


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_ckpt_path_last_to_evaluate_without_a_run_of_this_config_is_an_error_naming_the_runs(
    data_dir, three_runs, subcommand
):
    """Nothing to evaluate: an error (not a fresh net), naming each run and its difference."""
    before = snapshot(three_runs)
    args = quick(data_dir, three_runs, "--model.net", TORCHVISION_NET, "--ckpt_path", "last")
    with pytest.raises(CheckpointError) as error:
        run([subcommand, "--config", LENET, *args])
    run_dir = three_runs / "lightning_logs"
    message = str(error.value)
    assert message.startswith(f"--ckpt_path last: no earlier run of this config under {run_dir}.")
    assert "give its file: --ckpt_path FILE" in message
    for version in range(3):
        assert (
            f"not {run_dir}/version_{version}/checkpoints/last.ckpt: another config"
            " (model.net.class_path: 'groupwise.nets.LeNet5' there,"
            " 'torchvision.models.resnet18' here;" in message
        )
    assert_kept(three_runs, before)


# ---- a checkpoint that cannot be read, a run of this config file with other settings -------


@pytest.fixture(scope="module")
def one_run(data_dir, tmp_path_factory) -> Path:
    """lightning_logs/version_0: one epoch of configs/lenet.yaml as shipped."""
    root = tmp_path_factory.mktemp("one_run")
    fit(data_dir, root, *ONE_EPOCH)
    return root


def newer_last_ckpt(root: Path, version: str, data: bytes) -> Path:
    """Write ``data`` as ``version``'s last.ckpt, a second newer than every other file."""
    path = root / "lightning_logs" / version / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    newest = max(p.stat().st_mtime_ns for p in root.rglob("*.ckpt"))
    os.utime(path, ns=(newest + 10**9, newest + 10**9))
    return path


def foreign_checkpoint(path: Path) -> bytes:
    """A whole checkpoint of another tool: a hyper-parameter the safe loader refuses."""
    checkpoint = load(path)
    checkpoint["hyper_parameters"]["args"] = argparse.Namespace(lr=0.1)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def test_ckpt_path_last_passes_over_another_runs_unreadable_checkpoint_by_name(
    data_dir, one_run, tmp_path, caplog
):
    root = runs_copy(one_run, tmp_path)
    ours = root / "lightning_logs/version_0/checkpoints/last.ckpt"
    theirs = newer_last_ckpt(root, "version_1", foreign_checkpoint(ours))
    cli = fit(data_dir, root, "--trainer.max_epochs", "2", "--ckpt_path", "last", RECORD)
    assert_starts_from(resumed_from(cli), ours)
    assert f"Resuming from {ours}" in caplog.text
    assert f"not {theirs}: not readable (UnpicklingError: " in caplog.text
    assert "GLOBAL argparse.Namespace" in caplog.text


def test_a_damaged_newer_last_ckpt_is_passed_over_by_name_for_a_whole_run_of_this_config(
    data_dir, one_run, tmp_path, caplog
):
    """A last.ckpt cut short may be this config's: with a whole run of this config beside
    it, that run is resumed and the cut one named (alone, it is an error:
    test_bad_checkpoint.py)."""
    root = runs_copy(one_run, tmp_path)
    ours = root / "lightning_logs/version_0/checkpoints/last.ckpt"
    cut = newer_last_ckpt(root, "version_1", ours.read_bytes()[:1000])
    cli = fit(data_dir, root, "--trainer.max_epochs", "2", "--ckpt_path", "last", RECORD)
    assert_starts_from(resumed_from(cli), ours)
    assert f"not {cut}: not readable (RuntimeError: " in caplog.text


def test_a_changed_setting_of_the_same_config_file_stops_naming_it(data_dir, one_run, tmp_path):
    """The new user's try: `--ckpt_path last` with another lr is not a new run (exit 0 from
    epoch 0) but one message with the difference and the ways on; nothing is written."""
    root = runs_copy(one_run, tmp_path)
    before = snapshot(root)
    args = quick(data_dir, root, "--trainer.max_epochs", "2", "--ckpt_path", "last", LR, "0.01")
    done = groupwise("fit", "--config", LENET, *args)
    assert done.returncode == 2, done.stderr[-3000:]
    path = root / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert done.stderr.count("error: ") == 1 and "Traceback" not in done.stderr
    message = done.stderr[done.stderr.index("error: ") :].splitlines()
    assert message == [
        f"error: --ckpt_path last: checkpoint {path}, the newest run of this config file"
        f" under {root / 'lightning_logs'}, was trained with other settings than this config has:",
        "  model.optimizer.init_args.lr: config 0.01, checkpoint 0.005",
        "A resume loads the checkpoint's optimizer and scheduler states, which would silently "
        "replace these settings. Either",
        "  - resume the run exactly as it was saved: drop these changes (the run's config.yaml "
        "holds its settings), or",
        f"  - start a new run from its weights with these settings: --model.init_weights {path} "
        "instead of --ckpt_path, or",
        "  - start a new run from scratch: drop --ckpt_path last.",
    ]
    assert snapshot(root) == before  # no new version directory, nothing rewritten

"""A failed start leaves nothing behind, and its one message offers only ways that work.

Each test runs the real `groupwise` command (a subprocess, as a user would) on the small
fabricated CIFAR-10 and compares every file under the test's folder before and after a
command that fails before its first step: byte for byte, and no file or folder added
(``tests/file_snapshot.py``). Runs: LeNet-5 or FastNet, 60 training images in batches of
20, so 3 optimizer steps per epoch.
"""

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_run import LENET, ROOT, groupwise, quick
from file_snapshot import snapshot
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from groupwise.cli import FirstBatch, RunFolders

FAST = str(ROOT / "configs" / "fast.yaml")


def tree(root: Path) -> tuple[dict, list[str]]:
    """Every file by content and mtime, and every folder, under ``root``."""
    return snapshot(root), sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def fails_leaving_nothing(root: Path, *args: str) -> str:
    """Run `groupwise ARGS`, expect exit 2 and the tree under ``root`` as it was; return
    the error (stderr from ``error:`` on)."""
    before = tree(root)
    done = groupwise(*args)
    assert done.returncode == 2, done.stderr
    assert tree(root) == before, done.stderr
    assert "Traceback" not in done.stderr
    return done.stderr[done.stderr.index("error:") :]


def fast_run(data_dir: Path, root: Path, *extra: str) -> list[str]:
    """`fit` of the fast recipe (FastNet, WarmupLinearLR per step) on the small data."""
    return ["fit", "--config", FAST, *quick(data_dir, root, "--model.channels_last", "false")] + [
        *extra
    ]


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory) -> Path:
    """A finished one-epoch run of the fast recipe: its schedule has ended."""
    root = tmp_path_factory.mktemp("finished")
    done = groupwise(*fast_run(data_dir, root, "--trainer.max_epochs", "1"))
    assert done.returncode == 0, done.stderr
    return root


def test_a_longer_resume_of_a_finished_run_offers_only_a_new_run(data_dir, finished):
    """Issue 24.2: it offered --model.extend_schedule true, which then failed ("the schedule
    has ended ... nothing left to stretch")."""
    error = fails_leaving_nothing(
        finished, *fast_run(data_dir, finished, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    )
    path = finished / "lightning_logs/version_0/checkpoints/last.ckpt"
    assert "extend_schedule" not in error
    assert error.splitlines()[1:] == [
        "  scheduler WarmupLinearLR: total_steps: config 6 (from the trainer), checkpoint 3",
        "Its schedule has ended (step 3 of 3): resumed as it was saved it trains no further, and"
        " there is nothing left to stretch. To train on:",
        f"  - start a new run from its weights with these settings: --model.init_weights {path}"
        " instead of --ckpt_path.",
    ]


@pytest.fixture(scope="module")
def lenet_run(data_dir, tmp_path_factory) -> Path:
    """A folder holding a finished one-epoch LeNet run under ``runs/``."""
    folder = tmp_path_factory.mktemp("lenet")
    done = groupwise(*lenet(data_dir, folder / "runs", "--trainer.max_epochs", "1"))
    assert done.returncode == 0, done.stderr
    return folder


def lenet(data_dir: Path, root: Path, *extra: str, command: str = "fit") -> list[str]:
    return [command, "--config", LENET, *quick(data_dir, root, *extra)]


LAST = "runs/lightning_logs/version_0/checkpoints/last.ckpt"


def test_a_resume_with_another_lr_leaves_nothing(data_dir, lenet_run):
    """Issue 24.3: the resume-settings error left version_1/ with config.yaml and events."""
    ckpt = lenet_run / LAST
    error = fails_leaving_nothing(
        lenet_run,
        *lenet(data_dir, lenet_run / "runs", "--trainer.max_epochs", "2"),
        *("--ckpt_path", str(ckpt), "--model.optimizer.init_args.lr", "0.5"),
    )
    assert error.startswith(f"error: checkpoint {ckpt} was trained with other optimizer")
    assert "  group features: lr: config 0.5, checkpoint 0.005" in error


def test_a_checkpoint_of_another_net_leaves_nothing(data_dir, lenet_run):
    error = fails_leaving_nothing(
        lenet_run,
        *fast_run(data_dir, lenet_run / "runs", "--trainer.max_epochs", "2"),
        *("--ckpt_path", str(lenet_run / LAST)),
    )
    assert error.startswith(f"error: checkpoint {lenet_run / LAST} holds weights")


def test_predict_without_a_test_split_leaves_nothing(data_dir, lenet_run, tmp_path):
    """Issue 24.3: the predict data error left a version_N/ with an event file."""
    no_test = tmp_path / "no-test"
    shutil.copytree(data_dir / "train", no_test / "train")
    error = fails_leaving_nothing(
        lenet_run,
        *lenet(no_test, lenet_run / "runs", command="predict"),
        *("--ckpt_path", str(lenet_run / LAST)),
    )
    assert error.startswith("error: `predict` needs a test split")


def test_a_data_error_in_setup_leaves_nothing(data_dir, lenet_run):
    error = fails_leaving_nothing(
        lenet_run, *lenet(data_dir, lenet_run / "runs"), "--data.val_size", "500"
    )
    assert error == "error: val_size must be in [0, 80) for 80 training images, got 500\n"


@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["--trainer.max_epoch", "2"], "error: unrecognized arguments: --trainer.max_epoch 2"),
        (
            ["--model.param_groups", '[{"name": "f", "modules": ["featurs"]}]'],
            "error: parameter group 'f': unknown module 'featurs' (did you mean 'features'?)",
        ),
    ],
    ids=["config", "groups"],
)
def test_a_config_or_group_error_in_a_new_folder_makes_no_folder(data_dir, tmp_path, args, start):
    error = fails_leaving_nothing(tmp_path, *lenet(data_dir, tmp_path / "new" / "runs"), *args)
    # jsonargparse 4.44 (the lower bound) writes "Unrecognized", later releases "unrecognized"
    assert error.lower().startswith(start.lower()) and error.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_resume_error_into_a_new_folder_removes_the_folders_it_made(
    data_dir, lenet_run, tmp_path
):
    """The run directory's parents that this start made go too; what existed stays."""
    (tmp_path / "mine").mkdir()
    error = fails_leaving_nothing(
        tmp_path,
        *lenet(data_dir, tmp_path / "mine" / "new" / "runs", "--trainer.max_epochs", "2"),
        *("--ckpt_path", str(lenet_run / LAST), "--model.optimizer.init_args.lr", "0.5"),
    )
    assert "was trained with other optimizer" in error
    assert [p.name for p in tmp_path.rglob("*")] == ["mine"]


# ---- what is removed, as a property: exactly what appeared in the run directory ------------

PART = st.sampled_from(["a", "b", "version_0", "config.yaml"])
PATHS = st.lists(st.lists(PART, min_size=1, max_size=3).map(tuple), max_size=6)


def write_files(base: Path, paths: list[tuple[str, ...]], text: str) -> None:
    """A file at each path under ``base`` where nothing is in its way."""
    for parts in paths:
        path = base.joinpath(*parts)
        if any(p.is_file() for p in [path, *path.parents]) or path.is_dir():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@settings(max_examples=60, deadline=None)
@given(
    existing=PATHS,
    empty=PATHS,
    log_dir=st.lists(PART, min_size=1, max_size=3).map(tuple),
    written=PATHS,
    started=st.booleans(),
)
def test_a_failed_start_removes_exactly_what_appeared(
    tmp_path_factory, existing, empty, log_dir, written, started
):
    root = tmp_path_factory.mktemp("tree")
    write_files(root, existing, "mine")
    for parts in empty:  # empty folders of the user's, maybe on the run directory's way
        if not any(p.is_file() for p in [root.joinpath(*parts), *root.joinpath(*parts).parents]):
            root.joinpath(*parts).mkdir(parents=True, exist_ok=True)
    folder = root.joinpath(*log_dir)
    assume(not any(p.is_file() for p in [folder, *folder.parents]))
    first = FirstBatch()
    logger = SimpleNamespace(log_dir=str(folder))
    trainer = SimpleNamespace(loggers=[logger], callbacks=[first], is_global_zero=True)
    before = tree(root)
    folders = RunFolders(trainer)
    folder.mkdir(parents=True, exist_ok=True)  # as Lightning's logger and SaveConfigCallback
    write_files(folder, written, "written by the failed start")
    during = tree(root)
    first.started = started
    folders.remove_if_not_started()
    assert tree(root) == (during if started else before)

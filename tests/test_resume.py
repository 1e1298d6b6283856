"""Determinism, exact resume after SIGKILL, and checkpoints that survive a kill during a save.

Each run is the `groupwise` command in a subprocess: 60 training images in batches of 20
(3 steps per epoch), 3 epochs, lr x0.5 at epochs 1 and 2.
"""

import json
import signal

import pytest
import torch
from cli_run import LENET, f32, groupwise, load, quick, scalars

pytestmark = pytest.mark.slow

SCHEDULE = [
    "--trainer.max_epochs", "3",
    "--model.optimizer.init_args.lr", "0.01",
    "--model.scheduler.init_args.milestones", "[1, 2]",
    "--model.scheduler.init_args.gamma", "0.5",
    "--trainer.deterministic", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    done = groupwise("fit", "--config", LENET, *quick(data_dir, root, *SCHEDULE))
    assert done.returncode == 0, done.stderr[-3000:]
    return load(root / "lightning_logs/version_0/checkpoints/last.ckpt")


def fault(callback: str, **init_args) -> str:
    spec = {"class_path": f"fault_injection.{callback}", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def assert_same_state(a: dict, b: dict) -> None:
    """Weights, optimizer state (momentum buffers, every group's lr) and scheduler, exactly."""
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    (opt_a,), (opt_b,) = a["optimizer_states"], b["optimizer_states"]
    assert opt_a["param_groups"] == opt_b["param_groups"]  # names, lrs, momentum, ...
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for index, state in opt_a["state"].items():
        assert torch.equal(state["momentum_buffer"], opt_b["state"][index]["momentum_buffer"])
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_two_seeded_deterministic_runs_are_bit_identical(data_dir, tmp_path, uninterrupted):
    done = groupwise("fit", "--config", LENET, *quick(data_dir, tmp_path, *SCHEDULE))
    assert done.returncode == 0, done.stderr[-3000:]
    again = load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert_same_state(again, uninterrupted)


def test_sigkill_mid_epoch_then_resume_from_last_matches_an_uninterrupted_run(
    data_dir, tmp_path, uninterrupted
):
    args = quick(data_dir, tmp_path, *SCHEDULE)
    killed = groupwise("fit", "--config", LENET, *args, fault("KillAtStep", step=4))
    assert killed.returncode == -signal.SIGKILL  # step 4 is the 2nd batch of epoch 1
    first = tmp_path / "lightning_logs/version_0"
    assert load(first / "checkpoints/last.ckpt")["global_step"] == 3  # end of epoch 0

    resumed = groupwise("fit", "--config", LENET, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr + resumed.stdout
    second = tmp_path / "lightning_logs/version_1"
    assert_same_state(load(second / "checkpoints/last.ckpt"), uninterrupted)
    # The milestones land on the same epochs: epochs 1 and 2 at half and a quarter.
    assert scalars(second)["lr-SGD/features"] == [(3, f32([0.005])[0]), (6, f32([0.0025])[0])]
    assert scalars(second)["lr-SGD/classifier"] == [(3, f32([0.05])[0]), (6, f32([0.025])[0])]


def test_kill_while_writing_last_ckpt_keeps_the_previous_one(data_dir, tmp_path, uninterrupted):
    args = quick(data_dir, tmp_path, *SCHEDULE)
    killed = groupwise("fit", "--config", LENET, *args, fault("KillDuringLastSave", epoch=1))
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "lightning_logs/version_0/checkpoints"
    # The half-written bytes went to a temporary file beside it, never to last.ckpt.
    (partial,) = checkpoints.glob(".last.ckpt.tmp-*")
    last = load(checkpoints / "last.ckpt")
    assert last["global_step"] == 3 and last["epoch"] == 0
    assert partial.stat().st_size < (checkpoints / "last.ckpt").stat().st_size

    resumed = groupwise("fit", "--config", LENET, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt")
    assert_same_state(final, uninterrupted)


def test_the_next_save_of_last_ckpt_removes_the_killed_save_s_temporary(
    data_dir, tmp_path, uninterrupted
):
    """Resumed into the same directory (a fixed logger version), the first save of
    last.ckpt removes the temporary the killed save left."""
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(tmp_path), "version": 0},
    }
    args = quick(data_dir, tmp_path, *SCHEDULE, "--trainer.logger", json.dumps(logger))
    killed = groupwise("fit", "--config", LENET, *args, fault("KillDuringLastSave", epoch=1))
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "lightning_logs/version_0/checkpoints"
    assert len(list(checkpoints.glob(".last.ckpt.tmp-*"))) == 1

    resumed = groupwise("fit", "--config", LENET, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(checkpoints.glob(".*"))
    assert_same_state(load(checkpoints / "last.ckpt"), uninterrupted)

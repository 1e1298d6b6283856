"""A NaN loss stops training with an error naming where it happened and every group's lr,
and loses nothing: the checkpoints written before it are whole, finite and resumable, and an
earlier run under the same root is untouched.

The NaN is injected by ``fault_injection.PoisonAtStep`` (one weight set to NaN before the
batch of global step 4, the 2nd batch of epoch 1: 60 training images in batches of 20),
added the way a user adds a callback, ``--trainer.callbacks+=...``. Every test runs twice:
with the guard reading the loss every step (its CPU default) and with the device-side check
read only every 50 steps (its accelerator default), where the NaN is caught by the check
before validation, still before any checkpoint.
"""

import json
import re

import pytest
import torch
from cli_run import LENET, quick
from file_snapshot import snapshot

from groupwise.callbacks.finite_loss import NonFiniteLossError
from groupwise.checkpoint.io import load_checkpoint_file
from groupwise.cli import run

CLEAN = "lightning_logs/version_0"  # an earlier, finished one-epoch run
POISONED = "lightning_logs/version_1"  # the run that hits the NaN in its second epoch
POISON = json.dumps({"class_path": "fault_injection.PoisonAtStep", "init_args": {"step": 4}})


def all_finite(checkpoint: dict) -> bool:
    """Weights and optimizer state (momentum buffers) all finite."""
    tensors = list(checkpoint["state_dict"].values())
    for optimizer in checkpoint.get("optimizer_states", []):
        tensors += [t for state in optimizer["state"].values() for t in state.values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@pytest.fixture(scope="module", params=[None, 50], ids=["read-every-step", "read-every-50"])
def poisoned(data_dir, tmp_path_factory, request) -> dict:
    """A clean one-epoch run, then a two-epoch run under the same root that hits a NaN."""
    root = tmp_path_factory.mktemp("runs")
    every = [] if request.param is None else [f"--finite_loss.check_every_n_steps={request.param}"]
    run(["fit", "--config", LENET, *quick(data_dir, root, "--trainer.max_epochs", "1")])
    before = snapshot(root)
    with pytest.raises(NonFiniteLossError) as error:
        run(
            ["fit", "--config", LENET]
            + quick(data_dir, root, "--trainer.max_epochs", "2")
            + [f"--trainer.callbacks+={POISON}", *every]
        )
    return {"root": root, "before": before, "message": str(error.value)}


def test_message_names_where_every_group_lr_and_the_kept_checkpoints(poisoned):
    message, run_dir = poisoned["message"], poisoned["root"] / POISONED
    # global step counts optimizer steps taken: the NaN batch (at step 4) makes it 5.
    assert "training loss is nan at epoch 1, batch 1, global step 5;" in message
    assert "learning rates: features=0.005, classifier=0.05." in message
    (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    kept = re.search(r"the last good checkpoint is kept: (.+?)\. Try", message)
    assert kept and set(kept[1].split(", ")) == {str(best), str(run_dir / "checkpoints/last.ckpt")}
    assert "--trainer.gradient_clip_val" in message  # a remedy


def test_last_ckpt_is_the_end_of_the_previous_epoch_whole_and_finite(poisoned):
    last = load_checkpoint_file(poisoned["root"] / POISONED / "checkpoints/last.ckpt")
    assert (last["epoch"], last["global_step"]) == (0, 3)  # 3 steps per epoch
    assert all_finite(last)
    # Same seed, same data: exactly the weights the clean one-epoch run ended with.
    clean = load_checkpoint_file(poisoned["root"] / CLEAN / "checkpoints/last.ckpt")
    for key, value in clean["state_dict"].items():
        assert torch.equal(last["state_dict"][key], value), key


def test_no_checkpoint_holds_nan_and_no_partial_file_is_left(poisoned):
    root = poisoned["root"]
    checkpoints = sorted(root.rglob("*.ckpt"))
    # A best and a last.ckpt per run; none written after the NaN.
    run_dirs = [p.relative_to(root).parent.parent.as_posix() for p in checkpoints]
    assert run_dirs == [CLEAN, CLEAN, POISONED, POISONED]
    for path in checkpoints:
        assert all_finite(load_checkpoint_file(path)), path
    assert not [p for p in root.rglob(".*") if p.is_file()]  # no .last.ckpt.tmp-* left


def test_the_earlier_run_is_untouched(poisoned):
    after = snapshot(poisoned["root"])
    before = poisoned["before"]
    assert {path: after.get(path) for path in before} == before
    assert all(path.startswith(POISONED + "/") for path in set(after) - set(before))


def test_the_kept_last_ckpt_resumes_to_the_end(poisoned, data_dir, tmp_path):
    last = poisoned["root"] / POISONED / "checkpoints/last.ckpt"
    before = snapshot(poisoned["root"])
    done = run(
        ["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs", "2")]
        + ["--ckpt_path", str(last)]
    )
    assert done.trainer.global_step == 6
    assert all_finite(
        load_checkpoint_file(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    )
    assert snapshot(poisoned["root"]) == before  # resuming from it only reads it


# A user's ModelCheckpoint that saves weights only, after every step (issue 21, item 2):
# Lightning calls no callback's on_save_checkpoint for such a save.
EVERY_STEP = json.dumps(
    {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"save_weights_only": True, "every_n_train_steps": 1, "save_top_k": -1,
                      "filename": "step{step}"},
    }
)  # fmt: skip
POISONS = {
    # a NaN weight before step 4's batch: that step's loss is NaN, read only every 50 steps
    "nan loss, read every 50 steps": (POISON, ["--trainer.log_every_n_steps", "50"]),
    # a NaN weight after step 4's update: that step's loss is finite and read at once
    "nan weights, loss read every step": (
        json.dumps({"class_path": "fault_injection.PoisonAfterStep", "init_args": {"step": 4}}),
        [],
    ),
}


@pytest.mark.parametrize("poison", list(POISONS))
def test_weights_only_checkpoints_every_step_never_hold_nan(data_dir, tmp_path, poison):
    fault, extra = POISONS[poison]
    with pytest.raises(NonFiniteLossError) as error:
        run(
            ["fit", "--config", LENET]
            + quick(data_dir, tmp_path, "--trainer.max_epochs", "2", *extra)
            + [f"--trainer.callbacks+={EVERY_STEP}", f"--trainer.callbacks+={fault}"]
        )
    checkpoints = sorted((tmp_path / "lightning_logs/version_0/checkpoints").glob("*.ckpt"))
    steps = sorted(load_checkpoint_file(p)["global_step"] for p in checkpoints if "step" in p.name)
    assert steps == [1, 2, 3, 4]  # every step before the NaN weights, none after
    for path in checkpoints:
        assert all_finite(load_checkpoint_file(path)), path
    kept = re.search(r"the last good checkpoint is kept: (.+?)\. Try", str(error.value))
    assert kept, str(error.value)
    named = kept[1].split(", ")
    assert str(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt") in named
    for path in named:  # each file called good is there and finite
        assert all_finite(load_checkpoint_file(path)), path

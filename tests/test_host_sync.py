"""No host sync in an ordinary training step, with every default callback on.

A step may read a tensor on the host (on a GPU: wait for the device) only when something is
written or shown: on a logging step (Lightning writes ``train/loss``; ``FiniteLossGuard``
reads its device-side check), on a ``GroupStats`` step, when the progress bar redraws, and
at the end of an epoch. Every other step (augmentation, forward, loss, backward, optimizer
step, callbacks and Lightning's own per-step work) reads nothing and makes no tensor from
Python data. On a CPU a ``TorchDispatchMode`` sees both (``host_reads.py``); on a GPU the
last test runs ordinary steps under ``torch.cuda.set_sync_debug_mode("error")``.

The fits: 60 training images in batches of 4 (15 steps per epoch), 2 epochs, Lightning
logging every 10 steps (after global steps 9, 19, 29), ``GroupStats`` every 10 (at 0, 10,
20), the progress bar on, redrawn at most every minute, so that which steps redraw does not
depend on how fast this machine runs them (at the first step and each epoch's last).
"""

import json

import pytest
import torch
from cli_run import LENET, ROOT, quick
from host_reads import HostReads
from lightning.pytorch import Callback

from groupwise.cli import run

FAST = str(ROOT / "configs" / "fast.yaml")
STEPS_PER_EPOCH, EPOCHS, EVERY = 15, 2, 10
STEPS = STEPS_PER_EPOCH * EPOCHS


BAR = {"class_path": "groupwise.callbacks.ProgressBar", "init_args": {"interval_s": 60}}


def fit_args(data_dir, root, *extra: str) -> list[str]:
    return quick(
        data_dir,
        root,
        "--data.batch_size=4",
        f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.log_every_n_steps={EVERY}",
        f"--group_stats.every_n_steps={EVERY}",
        "--trainer.enable_progress_bar=true",
        f"--trainer.callbacks+={json.dumps(BAR)}",
        *extra,
    )


def writes_or_shows(step: int) -> bool:
    """Whether global step ``step`` (counted before it) logs, measures or ends an epoch."""
    logging_step = (step + 1) % EVERY == 0
    group_stats_step = step % EVERY == 0
    epoch_end = (step + 1) % STEPS_PER_EPOCH == 0
    return logging_step or group_stats_step or epoch_end


@pytest.mark.parametrize("config", [LENET, FAST], ids=["lenet", "fast"])
def test_ordinary_training_steps_make_no_host_read(data_dir, tmp_path, config):
    windows = json.dumps({"class_path": "host_reads.StepWindows"})
    with HostReads() as seen:
        cli = run(
            ["fit", "--config", config]
            + fit_args(data_dir, tmp_path, f"--trainer.callbacks+={windows}")
        )
    assert cli.trainer.global_step == STEPS
    redraws = {w[1] for w in seen.redraws if w[0] == "step"}
    allowed = {s for s in range(STEPS) if writes_or_shows(s)} | redraws
    ordinary = set(range(STEPS)) - allowed
    assert len(ordinary) >= 10, f"too few ordinary steps to show anything: {sorted(ordinary)}"
    reads, made = seen.steps_with(seen.reads), seen.steps_with(seen.made)
    where = json.dumps(seen.where, indent=1)
    assert {s: n for s, n in reads.items() if s in ordinary} == {}, where
    assert {s: n for s, n in made.items() if s in ordinary} == {}, where
    # the batched augmentation on the device, every batch: nothing read, nothing made
    assert seen.steps_with(seen.reads, "augment") == {}, where
    assert seen.steps_with(seen.made, "augment") == {}, where
    # the counting sees the reads that are due: the value written on each logging step
    assert {9, 19, 29} <= set(reads), where


def checked_on_cuda(step: int) -> bool:
    """An ordinary step after the first (which makes the per-device constants once)."""
    return step > 0 and not writes_or_shows(step)


class SyncDebugSteps(Callback):
    """Runs the ordinary steps (and their batches' augmentation) of a CUDA fit under
    ``torch.cuda.set_sync_debug_mode("error")``: a sync there raises."""

    def __init__(self) -> None:
        self.checked: list[int] = []

    def on_train_start(self, trainer, pl_module) -> None:
        datamodule = trainer.datamodule
        transfer = datamodule.on_after_batch_transfer

        def transferring(batch, dataloader_idx):
            if not (trainer.training and checked_on_cuda(trainer.global_step)):
                return transfer(batch, dataloader_idx)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return transfer(batch, dataloader_idx)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        datamodule.on_after_batch_transfer = transferring

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if checked_on_cuda(trainer.global_step):
            torch.cuda.set_sync_debug_mode("error")
            self.checked.append(trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ordinary_cuda_training_steps_do_not_sync(data_dir, tmp_path):
    """The fast recipe on one GPU: ordinary steps, from the batch's augmentation to the end
    of the callbacks' ``on_train_batch_end`` (the progress bar's comes before this
    callback's; it redraws only at the first step and each epoch's last), run with syncs
    turned into errors."""
    sync_debug = json.dumps({"class_path": "test_host_sync.SyncDebugSteps"})
    cli = run(
        ["fit", "--config", FAST]
        + fit_args(data_dir, tmp_path, "--trainer.accelerator=gpu", "--trainer.devices=1")
        + [f"--trainer.callbacks+={sync_debug}"]
    )
    assert cli.trainer.global_step == STEPS
    (checker,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "SyncDebugSteps"]
    expected = [s for s in range(STEPS) if checked_on_cuda(s)]
    assert checker.checked == expected and len(expected) >= 10

"""``--model.extend_schedule true``: continue a run for more epochs.

Without it, a resume whose schedule length (taken from the trainer) differs from the
checkpoint's is an error that names the length and this option. With it, a
``WarmupLinearLR`` whose ``total_steps`` comes from the trainer keeps a warm-up still in
progress as planned, then falls linearly from its factor at the resumed step (1 if it was
still warming up) to ``end_factor`` at the new ``total_steps``; a ``MultiStepLR`` simply goes
on with its milestones.

Runs: LeNet-5 (features at lr 0.005, classifier at 10x), 60 training images in batches of
20, so 3 optimizer steps per epoch; ``WarmupLinearLR`` stepped per optimizer step from 0.1
of the peak, decaying to 0. A run is "interrupted" at an epoch end by ``StopAfterEpoch``
(its last.ckpt is written, as when a run is killed later in the next epoch). Every lr below
is each group's lr when the optimizer steps, read from the optimizer at that step.
"""

import json
from pathlib import Path

import pytest
import torch
from cli_run import LENET, quick
from file_snapshot import assert_kept, snapshot
from lightning.pytorch import Callback

from groupwise.checkpoint.io import CheckpointError
from groupwise.cli import run
from groupwise.optim.warmup_linear import WarmupLinearLR

PEAKS = (0.005, 0.05)  # features, classifier
LAST = "checkpoints/last.ckpt"


class StopAfterEpoch(Callback):
    """Stop the run at the end of epoch ``epoch``, its last.ckpt written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class RecordLrs(Callback):
    """Each group's lr at every optimizer step, by global step."""

    def __init__(self) -> None:
        self.lrs: dict[int, tuple[float, ...]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        (optimizer,) = trainer.optimizers
        self.lrs[trainer.global_step] = tuple(g["lr"] for g in optimizer.param_groups)


def callback(name: str, **init_args) -> str:
    spec = {"class_path": f"test_extend_schedule.{name}", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def warmup_linear(warmup_fraction: float) -> list[str]:
    scheduler = {
        "class_path": "groupwise.optim.WarmupLinearLR",
        "init_args": {"warmup_fraction": warmup_fraction, "start_factor": 0.1, "end_factor": 0.0},
    }
    return ["--model.scheduler", json.dumps(scheduler), "--model.scheduler_interval", "step"]


def fit(data_dir: Path, root: Path, epochs: int, *extra: str) -> dict[int, tuple[float, ...]]:
    """A fit in-process; returns the lrs of every step it made."""
    args = quick(data_dir, root, "--trainer.max_epochs", str(epochs), callback("RecordLrs"))
    cli = run(["fit", "--config", LENET, *args, *extra])
    (recorder,) = [c for c in cli.trainer.callbacks if isinstance(c, RecordLrs)]
    return recorder.lrs


def expected(factors: dict[int, float]) -> dict[int, tuple[float, ...]]:
    return {step: tuple(peak * f for peak in PEAKS) for step, f in factors.items()}


def assert_lrs(lrs: dict[int, tuple[float, ...]], factors: dict[int, float]) -> None:
    assert list(lrs) == list(factors)
    for step, want in expected(factors).items():
        assert lrs[step] == pytest.approx(want, rel=1e-12, abs=1e-15), step


EXTEND = ("--model.extend_schedule", "true")


def test_a_resume_past_the_warmup_stretches_the_decay_from_the_current_lr(data_dir, tmp_path):
    """Planned: 3 epochs = 9 steps, warm-up round(9/3) = 3 steps, so the factor at step k
    is 0.1 + 0.3 k for k < 3, then 1 - (k - 3) / 6. Stopped after epoch 1 (step 6, factor
    0.5), resumed for 5 epochs = 15 steps: from 0.5 at step 6 down to 0 at step 15, i.e.
    0.5 - 0.5 (k - 6) / 9 = (15 - k) / 18."""
    schedule = warmup_linear(1 / 3)
    first = fit(data_dir, tmp_path, 3, *schedule, callback("StopAfterEpoch", epoch=1))
    assert_lrs(first, {0: 0.1, 1: 0.4, 2: 0.7, 3: 1.0, 4: 5 / 6, 5: 4 / 6})
    resumed = fit(data_dir, tmp_path, 5, *schedule, *EXTEND, "--ckpt_path", "last")
    assert_lrs(resumed, {k: (15 - k) / 18 for k in range(6, 15)})


def test_a_resume_in_the_warmup_finishes_it_then_decays_over_the_new_length(data_dir, tmp_path):
    """Planned: 4 epochs = 12 steps, warm-up 6 steps (0.1 + 0.15 k). Stopped after epoch 0
    (step 3), resumed for 6 epochs = 18 steps: the warm-up goes on to 1.0 at step 6, then
    1 - (k - 6) / 12 = (18 - k) / 12. That run stopped after epoch 3 and resumed again with
    the same length (no change: the stretched schedule is in the checkpoint) ends it."""
    schedule = warmup_linear(0.5)
    first = fit(data_dir, tmp_path, 4, *schedule, callback("StopAfterEpoch", epoch=0))
    assert_lrs(first, {0: 0.1, 1: 0.25, 2: 0.4})
    second = fit(
        data_dir, tmp_path, 6, *schedule, *EXTEND, "--ckpt_path", "last",
        callback("StopAfterEpoch", epoch=3),
    )  # fmt: skip
    decay = {k: (18 - k) / 12 for k in range(6, 18)}
    assert_lrs(second, {3: 0.55, 4: 0.7, 5: 0.85} | {k: decay[k] for k in range(6, 12)})
    third = fit(data_dir, tmp_path, 6, *schedule, "--ckpt_path", "last")
    assert_lrs(third, {k: decay[k] for k in range(12, 18)})


def test_without_the_option_a_longer_run_is_an_error_naming_it(data_dir, tmp_path):
    schedule = warmup_linear(1 / 3)
    fit(data_dir, tmp_path, 3, *schedule, callback("StopAfterEpoch", epoch=1))
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError) as error:
        fit(data_dir, tmp_path, 5, *schedule, "--ckpt_path", "last")
    path = tmp_path / "lightning_logs/version_0" / LAST
    assert str(error.value).splitlines() == [
        f"checkpoint {path} was trained with other optimizer or scheduler settings than this "
        "config has:",
        "  scheduler WarmupLinearLR: total_steps: config 15 (from the trainer), checkpoint 9",
        "A resume loads the checkpoint's optimizer and scheduler states, which would silently "
        "replace these settings. Either",
        "  - resume the run exactly as it was saved: drop these changes (the run's config.yaml "
        "holds its settings), or",
        f"  - start a new run from its weights with these settings: --model.init_weights {path} "
        "instead of --ckpt_path, or",
        "  - continue this run over the new length, the rest of its schedule stretched to end "
        "there: --model.extend_schedule true.",
    ]
    assert_kept(tmp_path, before)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ["--model.optimizer.init_args.lr", "0.01"],
            "  group features: lr: config 0.01, checkpoint 0.005",
        ),
        (
            [],
            "extend_schedule: the schedule of checkpoint {path} has ended (step 9 of 9): there "
            "is nothing left to stretch; to train on, start a new run from its weights with "
            "its own schedule: --model.init_weights {path}",
        ),
    ],
    ids=["another lr", "a finished run"],
)
def test_extend_schedule_changes_only_the_length(data_dir, tmp_path, change, message):
    """The option allows another length, nothing else; and the schedule of a finished run
    (3 epochs = 9 steps, resumed at step 9) has no rest to stretch."""
    schedule = warmup_linear(1 / 3)
    fit(data_dir, tmp_path, 3, *schedule)
    before = snapshot(tmp_path)
    # the file by name: `--ckpt_path last` takes only a run of this config (another lr is
    # another config, see test_ckpt_path_last.py)
    path = tmp_path / "lightning_logs/version_0" / LAST
    with pytest.raises(CheckpointError) as error:
        fit(data_dir, tmp_path, 5, *schedule, *EXTEND, "--ckpt_path", str(path), *change)
    assert message.format(path=path) in str(error.value).splitlines()
    assert_kept(tmp_path, before)


def test_a_multisteplr_run_goes_on_with_its_milestones(data_dir, tmp_path):
    """LeNet's MultiStepLR with milestones [1, 3] (epochs), gamma 0.1: 2 epochs, then resumed
    to 4 (with or without the option: its length does not come from the trainer)."""
    milestones = ["--model.scheduler.init_args.milestones", "[1, 3]"]
    first = fit(data_dir, tmp_path, 2, *milestones)
    resumed = fit(data_dir, tmp_path, 4, *milestones, *EXTEND, "--ckpt_path", "last")
    factors = [1.0] * 3 + [0.1] * 6 + [0.01] * 3  # epochs 0, 1-2, 3
    assert_lrs(first | resumed, dict(enumerate(factors)))


def test_a_stretch_must_end_after_the_current_step():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = WarmupLinearLR(optimizer, total_steps=9, warmup_fraction=1 / 3)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
    with pytest.raises(ValueError, match=r"at step 6 \(warm-up to step 3\) cannot be stretched "
                       r"to end at step 6: it must end after step 6"):  # fmt: skip
        scheduler.stretch(6)
    scheduler.stretch(7)  # one more step: from factor 0.5 at step 6 to 0 at step 7
    assert optimizer.param_groups[0]["lr"] == 0.5
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 0.0

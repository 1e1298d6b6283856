"""What the callbacks say and log (issue 24, section 4), read as a user reads it: the lines
`groupwise` prints, the TensorBoard tags of the run, the run's summary.txt.

LeNet on 60 fabricated training images in batches of 20: 3 optimizer steps per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning_utilities.core.rank_zero as rank_zero
import pytest
import torch
from cli_run import GROUPWISE, LENET, f32, groupwise, quick, scalars, subprocess_env
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from test_custom_scalars import read_layout
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from groupwise.callbacks import EMAWeightAveraging, FreezeGroups
from groupwise.callbacks.lr_monitor import LearningRateMonitor
from groupwise.cli import run

STEPS_PER_EPOCH = 3


def callback(class_path: str, **init_args) -> str:
    return f"--trainer.callbacks+={json.dumps({'class_path': class_path, 'init_args': init_args})}"


def lines_of(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def only_run(root: Path) -> Path:
    (run_dir,) = (root / "lightning_logs").iterdir()
    return run_dir


# ---- FreezeGroups --------------------------------------------------------------------------


def test_freeze_groups_says_when_groups_freeze_and_unfreeze_and_tensorboard_marks_them(
    data_dir, tmp_path
):
    """features (and its no_decay half) frozen for 2 of 3 epochs: a line at epoch 0 and at
    the unfreeze, and a per-group `frozen` scalar (1 while frozen) beside the lr charts."""
    args = quick(
        data_dir,
        tmp_path,
        "--trainer.max_epochs", "3",
        "--model.no_decay_split", "true",
        "--model.scheduler.init_args.milestones", "[1]",
        callback("groupwise.callbacks.FreezeGroups", frozen={"features": 2}),
    )  # fmt: skip
    done = groupwise("fit", "--config", LENET, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines_of(done.stderr, "FreezeGroups") == [
        "FreezeGroups: epoch 0 (step 0): frozen, no updates: features, features.no_decay"
        " until epoch 2",
        "FreezeGroups: epoch 2 (step 6): unfrozen, training at lr 0.0005: features,"
        " features.no_decay",
    ]
    logged = scalars(only_run(tmp_path))
    for group in ("features", "features.no_decay"):
        assert logged[f"groups/{group}/frozen"] == [(0, 1.0), (3, 1.0), (6, 0.0)]
    assert sorted(tag for tag in logged if tag.endswith("/frozen")) == [
        "groups/features.no_decay/frozen",
        "groups/features/frozen",
    ]  # none for the classifier, which is never frozen
    # the Custom Scalars tab has the marks in a chart of their own
    charts = read_layout(only_run(tmp_path))["parameter groups"]
    assert charts["frozen (1: no update)"] == [
        re.escape(f"groups/{group}/frozen") + "$" for group in ("features", "features.no_decay")
    ]


# ---- EMAWeightAveraging --------------------------------------------------------------------


def test_ema_says_when_averaging_starts_and_tensorboard_counts_its_updates(data_dir, tmp_path):
    spec = {"decay": 0.5, "update_starting_at_epoch": 1}
    args = quick(
        data_dir,
        tmp_path,
        "--trainer.max_epochs", "2",
        callback("groupwise.callbacks.EMAWeightAveraging", **spec),
    )  # fmt: skip
    done = groupwise("fit", "--config", LENET, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert lines_of(done.stderr, "EMAWeightAveraging") == [
        "EMAWeightAveraging: averaging from step 4 (epoch 1) on: validation,"
        " checkpoints and the final weights use the average from here"
    ]
    # 0 updates at the end of epoch 0; the first at step 4; 3 at the end of epoch 1
    assert scalars(only_run(tmp_path))["ema/updates"] == [(3, 0.0), (4, 1.0), (6, 3.0)]


# ---- LearningRateMonitor -------------------------------------------------------------------


def test_a_group_with_its_own_optimizer_is_tagged_after_that_optimizer(data_dir, tmp_path):
    """An AdamW classifier under the SGD default: `lr-AdamW/classifier`, its beta1 under
    `lr-AdamW/classifier-momentum`, as Lightning tags a plain AdamW; the Custom Scalars
    lr chart draws the same tags."""
    rules = [
        {"name": "features", "modules": ["features"]},
        {
            "name": "classifier",
            "modules": ["classifier"],
            "optimizer": {
                "class_path": "torch.optim.AdamW",
                "init_args": {"lr": 0.001, "betas": [0.8, 0.99], "weight_decay": 0.01},
            },
        },
    ]
    args = quick(
        data_dir, tmp_path, "--trainer.max_epochs", "1", "--model.param_groups", json.dumps(rules)
    )
    cli = run(["fit", "--config", LENET, *args])
    run_dir = Path(cli.trainer.log_dir)
    logged = scalars(run_dir)
    assert sorted(tag for tag in logged if tag.startswith("lr-")) == [
        "lr-AdamW/classifier",
        "lr-AdamW/classifier-momentum",
        "lr-AdamW/classifier-weight_decay",
        "lr-SGD/features",
        "lr-SGD/features-momentum",
        "lr-SGD/features-weight_decay",
    ]
    assert logged["lr-AdamW/classifier"] == [(0, f32([0.001])[0])]
    assert logged["lr-AdamW/classifier-momentum"] == [(0, f32([0.8])[0])]
    assert logged["lr-SGD/features-momentum"] == [(0, f32([0.9])[0])]
    chart = read_layout(run_dir)["parameter groups"]["learning rate"]
    assert chart == [re.escape("lr-SGD/features") + "$", re.escape("lr-AdamW/classifier") + "$"]


def test_a_run_shorter_than_log_every_n_steps_logs_its_first_and_last_step_lr(data_dir, tmp_path):
    """A per-step schedule (lr x0.5 each step), 6 steps, log_every_n_steps 50: the lrs of
    steps 0 and 5, the ones those steps trained at."""
    args = quick(
        data_dir,
        tmp_path,
        "--trainer.max_epochs", "2",
        "--trainer.log_every_n_steps", "50",
        "--model.scheduler", "torch.optim.lr_scheduler.ExponentialLR",
        "--model.scheduler.gamma", "0.5",
        "--model.scheduler_interval", "step",
    )  # fmt: skip
    cli = run(["fit", "--config", LENET, *args])
    logged = scalars(Path(cli.trainer.log_dir))
    assert logged["lr-SGD/features"] == [(0, f32([0.005])[0]), (5, f32([0.005 / 32])[0])]
    assert logged["lr-SGD/classifier"] == [(0, f32([0.05])[0]), (5, f32([0.05 / 32])[0])]
    assert [step for step, _ in logged["lr-SGD/features-momentum"]] == [0, 5]


# ---- lr_find -------------------------------------------------------------------------------


def test_lr_find_ends_with_its_own_summary(data_dir, tmp_path):
    args = quick(data_dir, Path("."))
    sweep = ["--num_steps", "12", "--max_multiplier", "1e4", "--early_stop_threshold", "null"]
    done = run_from(tmp_path, "lr_find", "--config", LENET, *args, *sweep)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fit done" not in done.stderr + done.stdout
    summary = (tmp_path / "lightning_logs/version_0/summary.txt").read_text()
    lines = summary.splitlines()
    assert re.fullmatch(r"lr_find done in \d+\.\d s", lines[0])
    assert lines[1] == "run directory  lightning_logs/version_0"
    assert lines[2] == "steps          12 of 12, multiplier 0.001 to 1e+04"
    assert re.fullmatch(r"suggested      x[0-9.e+-]+: --model\.lr_multiplier [0-9.e+-]+", lines[3])
    assert lines[4] == "plot           lightning_logs/version_0/lr_find.png"
    assert lines[5].startswith("TensorBoard    ") and lines[5].endswith(
        "--logdir lightning_logs/version_0"
    )
    assert len(lines) == 6
    assert done.stderr.rstrip("\n").endswith(summary.rstrip("\n"))  # printed last


def run_from(cwd: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """`groupwise ARGS` run from ``cwd``; on a timeout its whole process group (the DDP
    ranks it started) is killed and the test fails saying so."""
    process = subprocess.Popen(
        [GROUPWISE, *args],
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"groupwise {args[0]} still running after {timeout} s:\n{err[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


@pytest.mark.slow
def test_lr_find_under_ddp_ends_with_one_summary(data_dir, tmp_path):
    """Two CPU processes: rank 0 reports, every rank takes part in the run directory's
    broadcast (Trainer.log_dir), so the command ends."""
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    args = quick(data_dir, Path("."), *ddp)
    done = run_from(tmp_path, "lr_find", "--config", LENET, *args, "--num_steps", "8", timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (tmp_path / "lightning_logs/version_0/summary.txt").read_text()
    assert summary.startswith("lr_find done in ")
    assert done.stderr.count("lr_find done in ") == 1
    assert done.stdout.count("Learning-rate range test: 8 of 8 steps") == 1


# ---- properties through a real Trainer on a two-group model --------------------------------


class TwoGroups(LightningModule):
    """Two named SGD groups (``a`` at lr 0.1, ``b`` at 0.5) on ``batches`` batches per
    epoch; with ``per_step``, a per-step schedule whose lr factor at step s is 1 / (s + 1)."""

    def __init__(self, batches: int, per_step: bool = True) -> None:
        super().__init__()
        self.batches, self.per_step = batches, per_step
        self.a, self.b = nn.Linear(2, 1), nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return (self.a(x) + self.b(x)).pow(2).mean()

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(2 * self.batches, 2)), batch_size=2)

    def configure_optimizers(self):
        groups = [
            {"params": self.a.parameters(), "name": "a"},
            {"params": self.b.parameters(), "name": "b", "lr": 0.5},
        ]
        optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
        if not self.per_step:
            return optimizer
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class Recorded(Logger):
    """Every ``log_metrics`` call, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []

    name = "recorded"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs) -> None:
        pass

    def values(self, tag: str) -> dict[int, list[float]]:
        """step -> the values logged for ``tag`` at that step."""
        found: dict[int, list[float]] = {}
        for step, metrics in self.calls:
            if tag in metrics:
                found.setdefault(step, []).append(metrics[tag])
        return found


def fit_two_groups(tmp_path, model, callbacks, **options) -> Recorded:
    logger = Recorded()
    trainer = Trainer(
        default_root_dir=tmp_path,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        accelerator="cpu",
        **options,
    )
    trainer.fit(model)
    return logger


@settings(max_examples=50, deadline=None)
@given(
    batches=st.integers(1, 5),
    epochs=st.integers(1, 3),
    every=st.integers(1, 8),
    accumulate=st.integers(1, 2),
    interval=st.sampled_from([None, "step"]),
)
def test_a_per_step_schedule_logs_its_first_and_last_step_and_every_nth(
    tmp_path_factory, batches, epochs, every, accumulate, interval
):
    """Whatever the run's length against log_every_n_steps: the lrs of step 0, of the last
    step and of every n-th step, each the lr that step trained at, and no other step."""
    monitor = LearningRateMonitor(logging_interval=interval, log_momentum=True)
    logged = fit_two_groups(
        tmp_path_factory.mktemp("lr"),
        TwoGroups(batches),
        [monitor],
        max_epochs=epochs,
        log_every_n_steps=every,
        accumulate_grad_batches=accumulate,
    )
    steps = epochs * math.ceil(batches / accumulate)
    expected = {0, steps - 1} | {s for s in range(steps) if (s + 1) % every == 0}
    for tag, lr in (("lr-SGD/a", 0.1), ("lr-SGD/b", 0.5)):
        values = logged.values(tag)
        assert set(values) == expected, tag
        for step, at_step in values.items():
            assert at_step == [pytest.approx(lr / (step + 1))] * len(at_step), (tag, step)
    assert set(logged.values("lr-SGD/a-momentum")) == expected


@contextmanager
def printed_lines() -> Iterator[list[str]]:
    """The lines Lightning's ``rank_zero_info`` prints meanwhile (its logger, whichever
    Lightning package set it), collected in a list."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = rank_zero.log
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


class EpochWeights(Callback):
    """Each group's weights at the end of each training epoch."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.epochs: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def weights(pl_module) -> dict[str, torch.Tensor]:
        return {g: getattr(pl_module, g).weight.detach().clone() for g in ("a", "b")}

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self.weights(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(self.weights(pl_module))


def expected_freeze_lines(frozen: dict[str, int], epochs: int, batches: int) -> list[str]:
    """The lines of ``FreezeGroups(frozen)``, written out from the groups' lrs (a: 0.1,
    b: 0.5, no scheduler) and the epoch each unfreezes."""
    lrs = {"a": 0.1, "b": 0.5}
    marked = {g: frozen[g] for g in ("a", "b") if frozen.get(g, 0) > 0}  # in group order
    lines = []
    if marked:
        until = {}
        for g, n in marked.items():
            until.setdefault(n, []).append(g)
        parts = "; ".join(f"{', '.join(gs)} until epoch {n}" for n, gs in until.items())
        lines.append(f"FreezeGroups: epoch 0 (step 0): frozen, no updates: {parts}")
    for epoch in range(1, epochs):
        groups = [g for g, n in marked.items() if n == epoch]
        if groups:
            at = [f"at lr {lrs[g]:g}: {g}" for g in groups]
            parts = "training " + "; ".join(at)
            where = f"epoch {epoch} (step {epoch * batches})"
            lines.append(f"FreezeGroups: {where}: unfrozen, {parts}")
    return lines


@settings(max_examples=50, deadline=None)
@given(
    frozen=st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 4), min_size=1),
    epochs=st.integers(1, 4),
    batches=st.integers(1, 3),
)
def test_freeze_groups_lines_and_marks_follow_the_epochs_each_group_is_frozen(
    tmp_path_factory, frozen, epochs, batches
):
    """One line at the first epoch naming the frozen groups and when they unfreeze, one at
    each unfreeze, a `frozen` mark per frozen group at every epoch start (1 while frozen);
    and the marks are true: a marked group's weights do not move in its frozen epochs."""
    weights = EpochWeights()
    with printed_lines() as lines:
        logged = fit_two_groups(
            tmp_path_factory.mktemp("freeze"),
            TwoGroups(batches, per_step=False),
            [FreezeGroups(frozen), weights],
            max_epochs=epochs,
            log_every_n_steps=1,
        )
    assert [line for line in lines if line.startswith("FreezeGroups")] == expected_freeze_lines(
        frozen, epochs, batches
    )
    for group in ("a", "b"):
        n = frozen.get(group, 0)
        marks = logged.values(FreezeGroups.tag(group))
        if n == 0:
            assert marks == {}
            continue
        assert marks == {e * batches: [float(e < n)] for e in range(epochs)}
        assert torch.equal(weights.epochs[0][group], weights.start[group]) == (n > 0)
        for epoch in range(1, epochs):
            still = torch.equal(weights.epochs[epoch][group], weights.epochs[epoch - 1][group])
            assert still == (epoch < n), (group, epoch)


@settings(max_examples=50, deadline=None)
@given(
    every=st.integers(0, 3),
    start_step=st.none() | st.integers(0, 8),
    start_epoch=st.none() | st.integers(0, 3),
    epochs=st.integers(1, 3),
    batches=st.integers(1, 3),
)
def test_ema_line_and_updates_follow_the_average(
    tmp_path_factory, every, start_step, start_epoch, epochs, batches
):
    """`ema/updates` at each epoch end is the average's own count (n_averaged); one line
    and one extra point at the step of the first update, none if it never starts."""
    ema = EMAWeightAveraging(
        decay=0.5,
        update_every_n_steps=every,
        update_starting_at_step=start_step,
        update_starting_at_epoch=start_epoch,
    )
    counts = AverageCounts(ema)
    with printed_lines() as lines:
        logged = fit_two_groups(
            tmp_path_factory.mktemp("ema"),
            TwoGroups(batches, per_step=False),
            [ema, counts],
            max_epochs=epochs,
            log_every_n_steps=1,
        )
    ends = [n for kind, _, _, n in counts.events if kind == "epoch end"]
    expected = {batches * (e + 1): [float(n)] for e, n in enumerate(ends)}
    first = next((event for event in counts.events if event[3] > 0), None)
    said = [line for line in lines if line.startswith("EMAWeightAveraging")]
    if first is None:
        assert said == []
    else:
        kind, step, epoch, _ = first
        assert said == [
            f"EMAWeightAveraging: averaging from step {step} (epoch {epoch}) on: validation,"
            " checkpoints and the final weights use the average from here"
        ]
        if kind == "step":  # an epoch end logs its count anyway
            expected.setdefault(step, []).insert(0, 1.0)
    assert logged.values("ema/updates") == expected


class AverageCounts(Callback):
    """Listed after the EMA callback: its average's own update count (n_averaged) after each
    step and each epoch end, in order, as (kind, step, epoch, count)."""

    def __init__(self, ema: EMAWeightAveraging) -> None:
        self.ema = ema
        self.events: list[tuple[str, int, int, int]] = []

    def record(self, kind: str, trainer) -> None:
        count = int(self.ema._average_model.n_averaged)
        self.events.append((kind, trainer.global_step, trainer.current_epoch, count))

    def on_train_batch_end(self, trainer, *args) -> None:
        self.record("step", trainer)

    def on_train_epoch_end(self, trainer, *args) -> None:
        self.record("epoch end", trainer)

"""What the callbacks say and log (issue 24, section 4), read as a user reads it: the lines
`groupwise` prints, the TensorBoard tags of the run, the run's summary.txt.

LeNet on 60 fabricated training images in batches of 20: 3 optimizer steps per epoch.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from cli_run import LENET, f32, quick, scalars
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import Logger
from test_custom_scalars import read_layout
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

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

"""A real `fit` on the shared JPEG CIFAR-10 (slow: run with -m slow)."""

from pathlib import Path

import pytest

from groupwise.cli import run

LENET = str(Path(__file__).resolve().parents[1] / "configs" / "lenet.yaml")

pytestmark = pytest.mark.slow


def test_lenet_two_epochs_reach_45_percent_validation_accuracy(real_cifar10_dir, tmp_path):
    cli = run(
        ["fit", "--config", LENET, "--data.data_dir", str(real_cifar10_dir)]
        + ["--trainer.max_epochs", "2", "--trainer.accelerator", "cpu"]
        + ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    )
    metrics = cli.trainer.callback_metrics
    # 45,000 training images in batches of 128: 352 steps per epoch.
    assert cli.trainer.global_step == 2 * 352
    # Seed 0 gives 50.75% here; seeds 1 and 2 gave 48.0%.
    assert float(metrics["val/acc"]) >= 0.45
    # Milestones are at epochs 10 and 15: both epochs ran at the configured lrs.
    assert float(metrics["lr-SGD/features"]) == pytest.approx(0.005)
    assert float(metrics["lr-SGD/classifier"]) == pytest.approx(0.05)

"""The `groupwise` command end to end, on fabricated CIFAR-shaped data, read as a user reads it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_run import GROUPWISE, LENET, RESNET18, f32, quick, scalars, tensorboard_hparams

from groupwise.classifier import Classifier
from groupwise.cli import run
from groupwise.nets import LeNet5


def test_fit_logs_each_group_lr_halved_at_each_milestone(data_dir, tmp_path):
    """A user runs the console script and reads every group's lr in TensorBoard."""
    args = quick(
        data_dir,
        tmp_path,
        "--trainer.max_epochs", "3",
        "--model.optimizer.init_args.lr", "0.01",
        "--model.scheduler.init_args.milestones", "[1, 2]",
        "--model.scheduler.init_args.gamma", "0.5",
    )  # fmt: skip
    done = subprocess.run(
        [GROUPWISE, "fit", "--config", LENET, *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "lightning_logs" / "version_0"
    tags = scalars(run_dir)
    steps = [0, 3, 6]  # 3 optimizer steps per epoch; logged at each epoch's start
    assert tags["lr-SGD/features"] == list(zip(steps, f32([0.01, 0.005, 0.0025]), strict=True))
    assert tags["lr-SGD/classifier"] == list(zip(steps, f32([0.1, 0.05, 0.025]), strict=True))
    assert tags["lr-SGD/features-momentum"] == list(zip(steps, f32([0.9] * 3), strict=True))
    assert tags["lr-SGD/classifier-weight_decay"] == list(zip(steps, f32([5e-4] * 3), strict=True))
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "epoch"} <= set(tags)
    assert len(tags["val/acc"]) == 3 and len(tags["train/acc"]) == 3
    # The group table is printed before training.
    assert re.search(r"features\s+4\s+2,872\s+0.01\s+0.0005\s+0.9\n", done.stdout + done.stderr)
    # TensorBoard's hparams tab: the optimizer, scheduler and every group rule.
    hparams = tensorboard_hparams(run_dir)
    assert hparams["optimizer/class_path"] == "torch.optim.SGD"
    assert hparams["optimizer/init_args/lr"] == 0.01
    assert (hparams["param_groups/1/name"], hparams["param_groups/1/lr_scale"]) == (
        "classifier",
        10,
    )
    # What the run leaves for the user: its full config and the checkpoints.
    assert (run_dir / "config.yaml").is_file()
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints
    assert checkpoints[0].startswith("epoch") and "-acc0." in checkpoints[0]


def test_validate_and_test_a_checkpoint(data_dir, tmp_path):
    fit = run(["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs", "2")])
    checkpoint = fit.trainer.checkpoint_callback
    last = str(Path(checkpoint.dirpath) / "last.ckpt")
    # last.ckpt is the final epoch even when val/acc did not improve in it.
    assert torch.load(last, weights_only=True)["global_step"] == fit.trainer.global_step == 6
    best_score = float(checkpoint.best_model_score)

    validate = run(
        ["validate", "--config", LENET, *quick(data_dir, tmp_path)]
        + ["--ckpt_path", checkpoint.best_model_path]
    )
    # Validating the best checkpoint reproduces the score it was kept for.
    assert float(validate.trainer.callback_metrics["val/acc"]) == pytest.approx(best_score)

    test = run(["test", "--config", LENET, *quick(data_dir, tmp_path), "--ckpt_path", last])
    accuracy = float(test.trainer.callback_metrics["test/acc"])
    # 20 test images: accuracy is a multiple of 1/20.
    assert accuracy * 20 == pytest.approx(round(accuracy * 20))
    assert "test/loss" in test.trainer.callback_metrics

    # predict: class probabilities for each of the 20 test images, from the checkpoint.
    predict = run(["predict", "--config", LENET, *quick(data_dir, tmp_path), "--ckpt_path", last])
    probabilities = torch.cat(predict.trainer.predict_loop.predictions)
    assert probabilities.shape == (20, 10)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(20))

    # A checkpoint written by the CLI rebuilds its net from the saved config alone.
    restored = Classifier.load_from_checkpoint(last)
    assert isinstance(restored.net, LeNet5)
    trained = fit.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in restored.state_dict().items())


@pytest.mark.parametrize(
    ("config", "groups"),
    [
        (LENET, ["features", "classifier"]),
        (RESNET18, ["backbone", "backbone.no_decay", "head", "head.no_decay"]),
    ],
)
def test_every_shipped_config_builds_and_steps(data_dir, tmp_path, config, groups):
    cli = run(
        ["fit", "--config", config, *quick(data_dir, tmp_path, "--trainer.fast_dev_run", "1")]
    )
    optimizer = cli.trainer.optimizers[0]
    assert [g["name"] for g in optimizer.param_groups] == groups
    (scheduler_config,) = cli.trainer.lr_scheduler_configs
    assert scheduler_config.interval == "epoch"
    assert isinstance(scheduler_config.scheduler, torch.optim.lr_scheduler.MultiStepLR)
    assert cli.trainer.global_step == 1


def test_torchvision_model_as_net(data_dir, tmp_path):
    net = '{"class_path": "torchvision.models.resnet18", "init_args": {"num_classes": 10}}'
    groups = '[{"name": "head", "modules": ["fc"], "lr_scale": 10}]'
    cli = run(
        ["fit", "--config", LENET]
        + quick(data_dir, tmp_path, "--trainer.fast_dev_run", "1")
        + ["--model.net", net, "--model.param_groups", groups]
    )
    head, default = cli.trainer.optimizers[0].param_groups
    assert (head["name"], len(head["params"]), head["lr"]) == ("head", 2, 0.05)
    assert (default["name"], len(default["params"]), default["lr"]) == ("default", 60, 0.005)


def test_lbfgs_closure_optimizer_trains(data_dir, tmp_path):
    """LBFGS takes one group and a closure; Lightning passes the closure, the loss falls.

    LBFGS is a full-batch method: the 60 training images form one batch, unaugmented.
    """
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "5")
    args += ["--data.batch_size", "60", "--data.augment", "false"]
    args += ["--model.param_groups", "[]", "--model.scheduler", "null"]
    args += ["--model.optimizer", "torch.optim.LBFGS", "--model.optimizer.init_args.lr", "1"]
    args += ["--model.optimizer.init_args.max_iter", "5"]
    args += ["--model.optimizer.init_args.line_search_fn", "strong_wolfe"]
    cli = run(["fit", "--config", LENET, *args])
    (group,) = cli.trainer.optimizers[0].param_groups
    assert group["name"] == "default"
    losses = [value for _, value in scalars(Path(cli.trainer.log_dir))["train/loss"]]
    assert len(losses) == 5  # one step per epoch
    assert losses[-1] < 0.5 * losses[0]


def test_print_config_shows_groups_and_default_callbacks(capsys):
    with pytest.raises(SystemExit) as stop:
        run(["fit", "--config", LENET, "--print_config"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    for expected in (
        "param_groups:",
        "- name: features",
        "lr_scale: 10.0",
        "class_path: torch.optim.lr_scheduler.MultiStepLR",
        "monitor: val/acc",
        "logging_interval: null",  # Lightning's: at the scheduler's own interval
    ):
        assert expected in printed


def test_unknown_group_module_is_a_clear_error_before_training(data_dir, tmp_path):
    groups = '[{"name": "convs", "modules": ["convs"]}]'
    with pytest.raises(ValueError, match=r"unknown module 'convs'; modules that exist: \["):
        run(["fit", "--config", LENET, *quick(data_dir, tmp_path), "--model.param_groups", groups])


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "groupwise", "--help"], capture_output=True, text=True, check=True
    )
    for subcommand in ("fit", "validate", "test", "predict"):
        assert subcommand in done.stdout


def test_without_a_scheduler_each_group_lr_is_logged_once_per_epoch(data_dir, tmp_path):
    extra = ["--trainer.max_epochs", "2", "--model.scheduler", "null"]
    fit = run(["fit", "--config", LENET, *quick(data_dir, tmp_path, *extra)])
    logged = scalars(Path(fit.trainer.log_dir))
    assert logged["lr-SGD/features"] == [(0, f32([0.005])[0]), (3, f32([0.005])[0])]
    assert logged["lr-SGD/classifier"] == [(0, f32([0.05])[0]), (3, f32([0.05])[0])]

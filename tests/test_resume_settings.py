"""A resume with other optimizer or scheduler settings stops before training, naming each
difference and the two ways forward; nothing already saved changes.

Torch's ``optimizer.load_state_dict`` replaces every group's options with the checkpoint's,
and a scheduler's ``load_state_dict`` replaces its arguments: without this check the config,
the group table and ``param_groups.txt`` would say one thing and the run do another.
The checkpoint is LeNet's (configs/lenet.yaml: SGD lr 0.005, momentum 0.9, weight decay
5e-4, ``classifier`` at 10x; MultiStepLR milestones [10, 15], gamma 0.1) after 2 epochs.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from cli_run import LENET, quick
from fault_injection import RecordTrainStart
from file_snapshot import assert_kept, snapshot

from groupwise.checkpoint.compat import SETTINGS_KEY, settings_differences
from groupwise.checkpoint.io import CheckpointError, load_checkpoint_file
from groupwise.cli import run

LAST = "lightning_logs/version_0/checkpoints/last.ckpt"
ADAMW_COSINE = [
    "--model.optimizer", '{"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.003}}',
    "--model.scheduler",
    '{"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 10}}',
]  # fmt: skip


@pytest.fixture(scope="module")
def root(data_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    run(["fit", "--config", LENET, *quick(data_dir, root, "--trainer.max_epochs", "2")])
    return root


def resume(data_dir: Path, root: Path, *args: str):
    argv = quick(data_dir, root, "--trainer.max_epochs", "3", "--ckpt_path", str(root / LAST))
    return run(["fit", "--config", LENET, *argv, *args])


def test_the_checkpoint_records_the_settings_as_configured(root):
    settings = load_checkpoint_file(root / LAST)[SETTINGS_KEY]
    assert settings["optimizer"] == "torch.optim.sgd.SGD"
    assert list(settings["groups"]) == ["features", "classifier"]
    for name, lr in (("features", 0.005), ("classifier", 0.05)):
        options = settings["groups"][name]
        assert (options["lr"], options["momentum"], options["weight_decay"]) == (lr, 0.9, 5e-4)
        assert "initial_lr" not in options  # the scheduler's, not the config's
    assert settings["scheduler"] == {
        "class": "torch.optim.lr_scheduler.MultiStepLR",
        "args": {"milestones": [10, 15], "gamma": 0.1},
        "group_options": {},
        "from_trainer": [],
    }
    assert settings["training"] == {
        "model.loss_reduction": "mean",
        "model.label_smoothing": 0.0,
        "model.scheduler_interval": "epoch",
        "trainer.accumulate_grad_batches": 1,
        "trainer.gradient_clip_val": None,
        "trainer.gradient_clip_algorithm": None,
        "trainer.limit_train_batches": 1.0,
    }


CHANGES = {
    "lr and weight decay": (
        ["--model.optimizer.init_args.lr", "0.01", "--model.optimizer.init_args.weight_decay", "0"],
        [
            "group features: lr: config 0.01, checkpoint 0.005",
            "group features: weight_decay: config 0.0, checkpoint 0.0005",
            "group classifier: lr: config 0.1, checkpoint 0.05",
            "group classifier: weight_decay: config 0.0, checkpoint 0.0005",
        ],
    ),
    "one group's momentum": (
        ["--model.param_groups", '[{"name": "features", "modules": ["features"], "momentum": 0.5},'
         ' {"name": "classifier", "modules": ["classifier"], "lr_scale": 10}]'],
        ["group features: momentum: config 0.5, checkpoint 0.9"],
    ),
    "SGD to AdamW": (
        ["--model.optimizer", '{"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.005}}'],
        # jsonargparse carries lr and weight_decay over from SGD's init_args; the options
        # only one of the two classes has (momentum, betas, ...) are not compared
        ["optimizer: config torch.optim.adamw.AdamW, checkpoint torch.optim.sgd.SGD"],
    ),
    "milestones and gamma": (
        ["--model.scheduler.init_args.milestones", "[1, 3]",
         "--model.scheduler.init_args.gamma", "0.5"],
        [
            "scheduler MultiStepLR: milestones: config [1, 3], checkpoint [10, 15]",
            "scheduler MultiStepLR: gamma: config 0.5, checkpoint 0.1",
        ],
    ),
    "another scheduler": (
        ["--model.scheduler",
         '{"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 5}}'],
        ["scheduler: config torch.optim.lr_scheduler.StepLR, "
         "checkpoint torch.optim.lr_scheduler.MultiStepLR"],
    ),
    "no scheduler": (
        ["--model.scheduler", "null"],
        ["scheduler: config none, checkpoint torch.optim.lr_scheduler.MultiStepLR"],
    ),
    "AdamW, cosine, lr 3e-3 and T_max (the new user's try)": (
        ADAMW_COSINE,
        [
            "optimizer: config torch.optim.adamw.AdamW, checkpoint torch.optim.sgd.SGD",
            "group features: lr: config 0.003, checkpoint 0.005",
            "group classifier: lr: config 0.03, checkpoint 0.05",
            "scheduler: config torch.optim.lr_scheduler.CosineAnnealingLR, "
            "checkpoint torch.optim.lr_scheduler.MultiStepLR",
        ],
    ),
}  # fmt: skip
# Settings of the model and the trainer that decide when the scheduler and the optimizer
# step (issue 21, item 5: an interval changed on resume went on silently)
TRAINING_CHANGES = {
    "scheduler interval": (
        ["--model.scheduler_interval", "step"],
        ["model.scheduler_interval: config step, checkpoint epoch"],
    ),
    "gradient accumulation": (
        ["--trainer.accumulate_grad_batches", "2"],
        ["trainer.accumulate_grad_batches: config 2, checkpoint 1"],
    ),
    "gradient clipping": (
        ["--trainer.gradient_clip_val", "0.5"],
        ["trainer.gradient_clip_val: config 0.5, checkpoint none"],
    ),
    "batches per epoch": (
        ["--trainer.limit_train_batches", "2"],
        ["trainer.limit_train_batches: config 2, checkpoint 1.0"],
    ),
    # the loss decides every gradient: a summed loss is the mean's gradient x the batch size
    "loss reduction": (
        ["--model.loss_reduction", "sum"],
        ["model.loss_reduction: config sum, checkpoint mean"],
    ),
    "label smoothing": (
        ["--model.label_smoothing", "0.2"],
        ["model.label_smoothing: config 0.2, checkpoint 0.0"],
    ),
}  # fmt: skip
TRAINING_HEADER = "other optimizer, scheduler or training settings"


@pytest.mark.parametrize("change", list(TRAINING_CHANGES))
def test_a_resume_with_other_training_settings_names_each_one(root, data_dir, change):
    args, differences = TRAINING_CHANGES[change]
    before = snapshot(root)
    with pytest.raises(CheckpointError) as error:
        resume(data_dir, root, *args)
    path = root / LAST
    assert str(error.value).splitlines() == [
        f"checkpoint {path} was trained with {TRAINING_HEADER} than this config has:",
        *(f"  {line}" for line in differences),
        "A resume would go on under these settings from the checkpoint's state: the run "
        "would not be the one that was saved. Either",
        "  - resume the run exactly as it was saved: drop these changes (the run's config.yaml "
        "holds its settings), or",
        f"  - start a new run from its weights with these settings: --model.init_weights {path} "
        "instead of --ckpt_path.",
    ]
    assert_kept(root, before)


def test_logging_the_progress_bar_and_tta_may_change_on_resume(root, data_dir, tmp_path):
    recorder = json.dumps({"class_path": "fault_injection.RecordTrainStart"})
    done = resume(
        data_dir, root, "--trainer.default_root_dir", str(tmp_path),
        "--trainer.log_every_n_steps", "7", "--trainer.enable_progress_bar", "true",
        "--model.tta", "mirror",  # evaluation only: the training steps are the same
        f"--trainer.callbacks+={recorder}",
    )  # fmt: skip
    (recording,) = [c for c in done.trainer.callbacks if isinstance(c, RecordTrainStart)]
    assert recording.record["epoch"] == 2


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_resume_with_other_settings_lists_each_difference_and_the_ways_forward(
    root, data_dir, change
):
    args, differences = CHANGES[change]
    before = snapshot(root)
    with pytest.raises(CheckpointError) as error:
        resume(data_dir, root, *args)
    path = root / LAST
    assert str(error.value).splitlines() == [
        f"checkpoint {path} was trained with other optimizer or scheduler settings than this "
        "config has:",
        *(f"  {line}" for line in differences),
        "A resume loads the checkpoint's optimizer and scheduler states, which would silently "
        "replace these settings. Either",
        "  - resume the run exactly as it was saved: drop these changes (the run's config.yaml "
        "holds its settings), or",
        f"  - start a new run from its weights with these settings: --model.init_weights {path} "
        "instead of --ckpt_path.",
    ]
    assert_kept(root, before)  # no checkpoint, no param_groups.txt: training never started


def test_the_same_settings_resume_and_a_longer_multisteplr_run_goes_on(root, data_dir, tmp_path):
    """max_epochs is no optimizer or scheduler setting: MultiStepLR's milestones are epochs."""
    recorder = json.dumps({"class_path": "fault_injection.RecordTrainStart"})
    done = resume(data_dir, root, "--trainer.default_root_dir", str(tmp_path),
                  f"--trainer.callbacks+={recorder}")  # fmt: skip
    (recording,) = [c for c in done.trainer.callbacks if isinstance(c, RecordTrainStart)]
    assert recording.record["epoch"] == 2 and recording.record["scheduler_last_epoch"] == [2]
    assert recording.record["groups"] == [("features", 0.005, 4), ("classifier", 0.05, 6)]
    assert load_checkpoint_file(tmp_path / LAST)["epoch"] == 2


def test_the_new_run_from_the_weights_takes_the_new_settings(root, data_dir, tmp_path):
    """The second way forward the message names."""
    recorder = json.dumps({"class_path": "fault_injection.RecordTrainStart"})
    argv = quick(data_dir, tmp_path, "--trainer.max_epochs", "1")
    done = run(
        ["fit", "--config", LENET, *argv, *ADAMW_COSINE, "--model.init_weights", str(root / LAST),
         f"--trainer.callbacks+={recorder}"]
    )  # fmt: skip
    (recording,) = [c for c in done.trainer.callbacks if isinstance(c, RecordTrainStart)]
    assert recording.record["groups"] == [("features", 0.003, 4), ("classifier", 0.03, 6)]
    assert type(done.trainer.optimizers[0]).__name__ == "AdamW"


def test_a_checkpoint_without_recorded_settings_resumes_with_a_warning(root, data_dir, tmp_path):
    """Checkpoints written before the settings were recorded still resume."""
    old = load_checkpoint_file(root / LAST)
    del old[SETTINGS_KEY]
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    argv = quick(data_dir, tmp_path, "--trainer.max_epochs", "3", "--ckpt_path", str(path))
    with pytest.warns(UserWarning, match=re.escape(f"checkpoint {path} records no optimizer")):
        run(["fit", "--config", LENET, *argv])


def test_a_checkpoint_that_predates_the_loss_settings_resumes(root):
    """Checkpoints saved before the loss options were recorded have no such keys: nothing
    to compare, no difference (the settings it does record are still compared)."""
    saved = load_checkpoint_file(root / LAST)[SETTINGS_KEY]
    older = {**saved, "training": dict(saved["training"])}
    for key in ("model.loss_reduction", "model.label_smoothing"):
        del older["training"][key]
    current = {**saved, "training": {**saved["training"], "model.loss_reduction": "sum"}}
    assert settings_differences(older, current) == []
    current["training"]["trainer.accumulate_grad_batches"] = 2
    assert settings_differences(older, current) == [
        "trainer.accumulate_grad_batches: config 2, checkpoint 1"
    ]

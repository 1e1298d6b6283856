"""Weight EMA (`groupwise.callbacks.EMAWeightAveraging`) from YAML: which weights validation,
test, the checkpoints, a resume and `init_weights` use, checked against an average
computed here from the training weights after every step.

LeNet on 60 fabricated images in batches of 20: 3 optimizer steps per epoch.
"""

import copy
import json
import logging
import signal

import pytest
import torch
from cli_run import LENET, groupwise, load, quick
from fake_cifar import write_image_folder
from lightning.pytorch.callbacks import Callback
from test_resume import fault

from groupwise.callbacks import EMAWeightAveraging
from groupwise.checkpoint.io import CheckpointError
from groupwise.cli import run

DECAY = 0.5  # large steps: the average differs clearly from the weights


def ema(decay: float = DECAY, **init_args) -> str:
    spec = {
        "class_path": "groupwise.callbacks.EMAWeightAveraging",
        "init_args": {"decay": decay, **init_args},
    }
    return f"--trainer.callbacks+={json.dumps(spec)}"


SPY = '--trainer.callbacks+={"class_path": "fault_injection.RecordWeights"}'


def spy(cli):
    (found,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "RecordWeights"]
    return found.after_step


def average(states: list[dict], decay: float = DECAY) -> dict:
    """torch's get_ema_avg_fn, step by step: the first update copies the weights."""
    result = dict(states[0])
    for state in states[1:]:
        result = {k: decay * result[k] + (1 - decay) * state[k] for k in result}
    return result


def equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def net_weights(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("net.")}


def test_validation_test_and_checkpoints_use_the_averaged_weights(data_dir, tmp_path):
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "2", ema(), SPY)
    fit = run(["fit", "--config", LENET, *args])
    steps = spy(fit)
    assert len(steps) == 6
    expected = average([net_weights(s) for s in steps])
    last = load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    # the checkpoint's state_dict is the average of the 6 steps' weights, exactly; the
    # training weights are beside it
    assert equal(net_weights(last["state_dict"]), expected)
    assert equal(net_weights(last["current_model_state"]), net_weights(steps[-1]))
    assert not equal(expected, net_weights(steps[-1]))
    # after fit the model holds the average: a test in the same process uses it
    assert equal(net_weights(fit.model.state_dict()), expected)

    # The last validation of the fit (after step 6) scored the averaged weights: validating
    # the checkpoint (its state_dict) gives the same loss, the training weights another.
    logged = float(fit.trainer.callback_metrics["val/loss"])
    validate = run(["validate", "--config", LENET, *quick(data_dir, tmp_path), "--ckpt_path",
                    str(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")])  # fmt: skip
    assert float(validate.trainer.callback_metrics["val/loss"]) == pytest.approx(logged, rel=1e-6)
    validate.model.load_state_dict(last["current_model_state"])
    training = validate.trainer.validate(validate.model, validate.datamodule, verbose=False)
    assert training[0]["val/loss"] != pytest.approx(logged, rel=1e-4)


def test_before_averaging_starts_validation_and_checkpoints_use_the_training_weights(
    data_dir, tmp_path
):
    """Lightning's own callback validates and saves the weights it copied in setup (the
    initial ones) until update_starting_at_step: here the training weights."""
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "2", SPY)
    args.append(ema(update_starting_at_step=100))
    fit = run(["fit", "--config", LENET, *args])
    last = load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert equal(net_weights(last["state_dict"]), net_weights(spy(fit)[-1]))
    assert equal(net_weights(fit.model.state_dict()), net_weights(spy(fit)[-1]))


def test_resuming_without_the_callback_is_an_error_naming_it(data_dir, tmp_path):
    run(["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs", "1", ema())])
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "2")
    with pytest.raises(CheckpointError, match="written with weight averaging") as error:
        run(["fit", "--config", LENET, *args, "--ckpt_path", "last"])
    assert "--model.init_weights" in str(error.value)


def test_init_weights_loads_the_averaged_weights_and_says_so(data_dir, tmp_path, caplog):
    fit = run(["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs", "1",
                                                  ema(), SPY)])  # fmt: skip
    path = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    expected = average([net_weights(s) for s in spy(fit)])
    start = '--trainer.callbacks+={"class_path": "fault_injection.RecordTrainStart"}'
    args = quick(data_dir, tmp_path / "new", "--trainer.max_epochs", "1", start)
    with caplog.at_level(logging.INFO):
        new = run(["fit", "--config", LENET, *args, "--model.init_weights", str(path)])
    assert f"Initialised the model weights from {path} (its averaged weights)" in caplog.text
    (recorder,) = [c for c in new.trainer.callbacks if type(c).__name__ == "RecordTrainStart"]
    assert equal(net_weights(recorder.record["state_dict"]), expected)


def test_the_averaged_copy_holds_the_weights_not_the_trainer_or_the_data(data_dir, tmp_path):
    """AveragedModel deep-copies the LightningModule. LightningCLI's optimizer and scheduler
    factories reference the CLI, so a plain deepcopy also copied the trainer and the
    DataModule with its images (and failed under DDP): the copy shares the factories."""
    cli = run(["--config", LENET, *quick(data_dir, tmp_path)], run=False)
    cli.datamodule.setup("fit")
    memo: dict = {}
    twin = copy.deepcopy(cli.model, memo)
    copied = {type(value).__name__ for value in memo.values()}
    assert not copied & {"GroupwiseTrainer", "CIFAR10DataModule", "GroupwiseCLI"}
    assert twin.optimizer is cli.model.optimizer and twin.scheduler is cli.model.scheduler
    pairs = list(zip(twin.parameters(), cli.model.parameters(), strict=True))
    assert all(a is not b and torch.equal(a, b) for a, b in pairs)


DETERMINISTIC = ["--trainer.max_epochs", "3", "--trainer.deterministic", "true"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_averaged_weights_of_an_uninterrupted_run(data_dir, tmp_path):
    """Killed in epoch 1, resumed from last.ckpt (end of epoch 0): the average, its step
    count and the training weights at the end are those of a run that never stopped."""
    whole = tmp_path / "whole"
    done = groupwise("fit", "--config", LENET, *quick(data_dir, whole, *DETERMINISTIC, ema()))
    assert done.returncode == 0, done.stderr[-3000:]
    args = quick(data_dir, tmp_path / "killed", *DETERMINISTIC, ema())
    killed = groupwise("fit", "--config", LENET, *args, fault("KillAtStep", step=4))
    assert killed.returncode == -signal.SIGKILL
    resumed = groupwise("fit", "--config", LENET, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = load(whole / "lightning_logs/version_0/checkpoints/last.ckpt")
    b = load(tmp_path / "killed/lightning_logs/version_1/checkpoints/last.ckpt")
    assert a["global_step"] == b["global_step"] == 9
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert equal(a[key], b[key]), key
    assert int(b["averaging_state"]["n_averaged"]) == 9
    assert not equal(net_weights(b["state_dict"]), net_weights(b["current_model_state"]))


@pytest.mark.slow
def test_ddp_ranks_hold_identical_averages(tmp_path):
    """Two gloo ranks: each keeps its own average of the (all-reduced, identical) weights."""
    data = write_image_folder(tmp_path / "cifar", n_per_class=8)
    record = {"class_path": "fault_injection.RecordRank", "init_args": {"out": str(tmp_path / "r")}}
    args = quick(data, tmp_path, "--trainer.max_epochs", "2", "--data.batch_size", "10", ema())
    args += ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
    # RecordRank after the EMA callback: its on_train_end sees the average copied in
    done = groupwise("fit", "--config", LENET, *args, f"--trainer.callbacks+={json.dumps(record)}")
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [load(tmp_path / "r" / f"rank{r}.pt")["state_dict"] for r in (0, 1)]
    assert equal(ranks[0], ranks[1])
    last = load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert equal(net_weights(last["state_dict"]), net_weights(ranks[0]))
    assert int(last["averaging_state"]["n_averaged"]) == 6


class RecordAveraged(Callback):
    """After the EMA callback (listed after it): its update count after each step."""

    def __init__(self) -> None:
        self.after_step: list[int] = []

    def on_train_batch_end(self, trainer, *args) -> None:
        (ema_callback,) = [c for c in trainer.callbacks if isinstance(c, EMAWeightAveraging)]
        self.after_step.append(int(ema_callback._average_model.n_averaged))


COUNT = '--trainer.callbacks+={"class_path": "test_ema.RecordAveraged"}'


def test_update_starting_at_epoch_delays_averaging_to_that_epoch(data_dir, tmp_path):
    """3 steps per epoch, 3 epochs, averaging from epoch 1: none in epoch 0, then one update
    per step (no extra one at an epoch end: its weights are the last step's)."""
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "3", ema(update_starting_at_epoch=1))
    fit = run(["fit", "--config", LENET, *args, COUNT])
    (record,) = [c for c in fit.trainer.callbacks if isinstance(c, RecordAveraged)]
    assert record.after_step == [0, 0, 0, 1, 2, 3, 4, 5, 6]
    last = load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert int(last["averaging_state"]["n_averaged"]) == 6

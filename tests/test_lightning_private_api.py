"""The private Lightning names this project still relies on, one test each.

Where a public hook does the job the code uses it (``before_<subcommand>`` for
``--ckpt_path last``, the parsed config's ``trainer.callbacks`` for the user's progress
bar). Three private names remain, because no public hook does what they do; each test
below fails, saying which name, if a Lightning release renames it or stops calling it
(the project would then silently fall back to Lightning's own behaviour):

- ``LightningCLI._parse_ckpt_path``: overridden so that ``--ckpt_path FILE`` does not
  replace the config's model by the checkpoint's saved hyperparameters;
- ``LearningRateMonitor._extract_weight_decay``: overridden so that optimizers without
  weight decay (LBFGS, Rprop) log none instead of raising ``KeyError``;
- ``LightningModule._trainer``: read by ``Classifier``'s checkpoint hooks, which also run
  without a trainer (``Classifier.load_from_checkpoint``), where the public ``trainer``
  property raises.
"""

import pytest
import torch
from cli_run import LENET
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from groupwise.callbacks.lr_monitor import LearningRateMonitor
from groupwise.classifier import Classifier
from groupwise.cli import GroupwiseCLI, run
from groupwise.nets import LeNet5


class Called(Exception):
    pass


def test_lightning_cli_still_calls_parse_ckpt_path(monkeypatch, tmp_path):
    def spy(self):
        raise Called(self.config["subcommand"])

    monkeypatch.setattr(GroupwiseCLI, "_parse_ckpt_path", spy)
    ckpt = tmp_path / "any.ckpt"
    with pytest.raises(Called, match="validate"):
        run(["validate", "--config", LENET, "--ckpt_path", str(ckpt)])
    # If this fails, LightningCLI no longer calls _parse_ckpt_path: --ckpt_path FILE would
    # silently replace the config's model by the checkpoint's hyperparameters.


class RpropModel(BoringModel):
    def configure_optimizers(self):
        return torch.optim.Rprop(self.parameters(), lr=0.01)  # no weight_decay option


def test_learning_rate_monitor_still_extracts_weight_decay_through_the_override(tmp_path):
    monitor = LearningRateMonitor(logging_interval="step", log_weight_decay=True)
    calls = []
    original = monitor._extract_weight_decay
    monitor._extract_weight_decay = lambda group, name: calls.append(name) or original(group, name)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        limit_val_batches=0,
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer.fit(RpropModel())
    assert calls  # Lightning's stats go through _extract_weight_decay, so the override runs
    assert "lr-Rprop" in trainer.callback_metrics
    assert not any(name.endswith("weight_decay") for name in trainer.callback_metrics)


def test_lightning_module_still_keeps_its_trainer_in_underscore_trainer():
    model = Classifier(LeNet5())
    assert model._trainer is None  # the attribute exists before any Trainer
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)  # without a trainer: no group layout, no error
    model.on_load_checkpoint(checkpoint)
    assert set(checkpoint) == {"state_dict"}

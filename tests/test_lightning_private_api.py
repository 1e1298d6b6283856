"""The private Lightning names this project still relies on, one test each.

Where a public hook does the job the code uses it (``before_<subcommand>`` for
``--ckpt_path last``, the parsed config's ``trainer.callbacks`` for the user's progress
bar). These private names remain, because no public hook does what they do; each test
below fails, saying which name, if a Lightning release renames it or stops calling it
(the project would then silently fall back to Lightning's own behaviour, or fail):

- ``LightningCLI._parse_ckpt_path``: overridden so that ``--ckpt_path FILE`` does not
  replace the config's model by the checkpoint's saved hyperparameters;
- ``LearningRateMonitor._extract_weight_decay``: overridden so that optimizers without
  weight decay (LBFGS, Rprop) log none instead of raising ``KeyError``;
- ``LearningRateMonitor._extract_momentum``: overridden so that each group's own keys
  decide between ``betas`` and ``momentum`` (a group of another optimizer);
- ``LearningRateMonitor._check_duplicates_and_update_name`` and ``_extract_lr``:
  overridden so that each group of a ``CombinedOptimizer`` is tagged after its own
  optimizer (``lr-Muon/filters``, ``lr-AdamW/head``);
- ``LearningRateMonitor._extract_stats``, ``_LoggerConnector.should_update_logs`` and
  ``_TrainingEpochLoop._batches_that_stepped``: read by ``LearningRateMonitor`` to log a
  per-step schedule's first and last step as Lightning logs its other steps;
- ``TQDMProgressBar._should_update``: called by ``ProgressBar`` (whether a batch is one to
  count, as Lightning's bar decides it);
- ``WeightAveraging._average_model``: read by ``EMAWeightAveraging`` to make the average
  follow the training weights until its first update;
- ``_TrainingEpochLoop._broadcast_sigterm_tensor``: replaced on the fit's loop by
  ``Preemption`` under DDP (Lightning's per-step SIGTERM broadcast and ``.item()``, while
  Lightning's SIGTERM handler, the only thing that sets the flag it sends, is not
  installed); ``tests/test_ddp.py::test_ordinary_ddp_steps_make_no_host_read`` sees the
  sync come back if the name changes;
- ``_TrainingEpochLoop._should_check_val_fx`` (and ``FitLoop._data_fetcher``): called by
  ``Preemption`` to act on a signal after the validation due after a batch, not before it
  (Lightning's resume would skip that validation);
- ``LightningModule._trainer``: read by ``Classifier``'s checkpoint hooks, which also run
  without a trainer (``Classifier.load_from_checkpoint``), where the public ``trainer``
  property raises.
"""

import pytest
import torch
from cli_run import LENET
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from groupwise.callbacks.ema import EMAWeightAveraging
from groupwise.callbacks.lr_monitor import LearningRateMonitor
from groupwise.callbacks.progress_bar import ProgressBar
from groupwise.classifier import Classifier
from groupwise.cli import GroupwiseCLI, run
from groupwise.nets import LeNet5


def fit_briefly(tmp_path, callback, model, **overrides) -> Trainer:
    """Two training steps of ``model`` with ``callback``, logging every step."""
    options = dict(
        default_root_dir=tmp_path,
        max_steps=2,
        limit_val_batches=0,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    trainer = Trainer(**(options | overrides))
    trainer.fit(model)
    return trainer


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
    trainer = fit_briefly(tmp_path, monitor, RpropModel())
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


class AdamModel(BoringModel):
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_learning_rate_monitor_still_goes_through_the_momentum_and_name_overrides(tmp_path):
    monitor = LearningRateMonitor(logging_interval="step", log_momentum=True)
    calls = []
    for name in ("_extract_momentum", "_check_duplicates_and_update_name"):
        original = getattr(monitor, name)
        setattr(
            monitor,
            name,
            lambda *a, _name=name, _original=original, **k: (
                calls.append(_name) or _original(*a, **k)
            ),
        )
    trainer = fit_briefly(tmp_path, monitor, AdamModel())
    # If this fails, LearningRateMonitor no longer calls these: the overrides do nothing
    assert {"_extract_momentum", "_check_duplicates_and_update_name"} <= set(calls)
    assert trainer.callback_metrics["lr-Adam-momentum"] == pytest.approx(0.9)


def test_tqdm_progress_bar_still_has_should_update():
    bar = ProgressBar()
    # If this fails, TQDMProgressBar._should_update is gone or changed its signature
    assert bar._should_update(10, 10) is True  # the last batch is always counted


def test_weight_averaging_still_keeps_its_average_in_average_model(tmp_path):
    ema = EMAWeightAveraging(decay=0.9)
    fit_briefly(tmp_path, ema, BoringModel(), max_steps=1, logger=False)
    # If this fails, WeightAveraging no longer keeps its AveragedModel in _average_model:
    # the average would not follow the training weights until its first update
    assert isinstance(ema._average_model, torch.optim.swa_utils.AveragedModel)


def test_training_epoch_loop_still_broadcasts_sigterm_through_one_method():
    """Each DDP step calls ``self._broadcast_sigterm_tensor()`` (looked up on the loop
    instance, so an instance attribute replaces it) and nothing else sends the flag."""
    import inspect

    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    source = inspect.getsource(_TrainingEpochLoop.advance)
    assert "self._broadcast_sigterm_tensor()" in source
    assert "received_sigterm" in inspect.getsource(_TrainingEpochLoop._broadcast_sigterm_tensor)
    assert "received_sigterm" not in source


def test_training_epoch_loop_still_decides_validation_in_should_check_val_fx():
    """``_should_check_val_fx(data_fetcher)`` is what the loop asks after each batch."""
    import inspect

    from lightning.pytorch.loops.fit_loop import _FitLoop
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    parameters = inspect.signature(_TrainingEpochLoop._should_check_val_fx).parameters
    assert list(parameters) == ["self", "data_fetcher"]
    assert "self._should_check_val_fx(data_fetcher)" in inspect.getsource(
        _TrainingEpochLoop.on_advance_end
    )
    assert "self._data_fetcher" in inspect.getsource(_FitLoop.advance)


def test_the_names_the_learning_rate_monitor_reads_still_exist(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor as LightningMonitor

    assert callable(LightningMonitor._extract_stats) and callable(LightningMonitor._extract_lr)
    trainer = fit_briefly(tmp_path, LearningRateMonitor(logging_interval="step"), AdamModel())
    assert trainer.fit_loop.epoch_loop._batches_that_stepped == 2
    assert isinstance(trainer._logger_connector.should_update_logs, bool)

"""Callback hooks in a groupwise fit: only the callbacks that implement a hook are called,
and they see exactly the calls Lightning's own dispatch makes (``groupwise.hook_dispatch``)."""

import pytest
from cli_run import LENET, quick
from lightning.pytorch import Callback
from lightning.pytorch.trainer import call

from groupwise import hook_dispatch
from groupwise.cli import run

STEP_HOOKS = (
    "on_train_batch_start", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "on_train_batch_end",
)  # fmt: skip
OTHER_HOOKS = (
    "setup", "on_fit_start", "on_train_start", "on_train_epoch_start", "on_train_epoch_end",
    "on_validation_start", "on_validation_epoch_start", "on_validation_batch_start",
    "on_validation_batch_end", "on_validation_epoch_end", "on_validation_end",
    "on_save_checkpoint", "on_train_end", "on_fit_end", "teardown",
)  # fmt: skip


class Recorder(Callback):
    """Records every call of the hooks above: the hook, the LightningModule's
    ``_current_fx_name`` during it, the global step and the arguments after the module."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []


def _recording(hook: str):
    def record(self, trainer, pl_module, *args, **kwargs):
        shown = tuple(a if isinstance(a, int) else type(a).__name__ for a in args)
        entry = (hook, pl_module._current_fx_name, trainer.global_step, shown, sorted(kwargs))
        self.calls.append(entry)

    return record


for _hook in STEP_HOOKS + OTHER_HOOKS:
    setattr(Recorder, _hook, _recording(_hook))


def fit_calls(data_dir, root) -> list[tuple]:
    """The hook calls a Recorder sees in a real fit: 2 epochs of 3 steps, validation."""
    args = ["--config", LENET, *quick(data_dir, root, "--trainer.max_epochs=2")]
    cli = run(args, run=False)
    recorder = Recorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return recorder.calls


def test_no_callback_is_called_for_a_hook_it_does_not_implement(data_dir, tmp_path, monkeypatch):
    """Callback's empty per-step hooks are never called (Lightning's own dispatch calls each
    of them on every callback at every step: 14 callbacks x 6 steps each)."""
    empty_calls = {hook: 0 for hook in STEP_HOOKS}
    for hook in STEP_HOOKS:

        def counted(self, *args, _hook=hook, **kwargs):
            empty_calls[_hook] += 1

        monkeypatch.setattr(Callback, hook, counted)
    calls = fit_calls(data_dir, tmp_path)
    assert empty_calls == dict.fromkeys(STEP_HOOKS, 0)
    assert sum(c[0] == "on_before_zero_grad" for c in calls) == 6  # the hooks still run


def test_callbacks_see_the_calls_of_lightnings_dispatch(data_dir, tmp_path, monkeypatch):
    """Same hooks, order, arguments, steps and ``_current_fx_name`` as Lightning's own
    dispatch, in a fit with validation and checkpoints."""
    ours = fit_calls(data_dir, tmp_path / "ours")
    assert call._call_callback_hooks is hook_dispatch.dispatch
    monkeypatch.setattr(call, "_call_callback_hooks", hook_dispatch._lightning_dispatch)
    lightnings = fit_calls(data_dir, tmp_path / "lightning")
    assert len(ours) > 6 * len(STEP_HOOKS)
    assert ours == lightnings


@pytest.mark.parametrize("hook", ["on_before_zero_grad", "on_train_batch_end"])
def test_a_trainer_with_a_profiler_gets_lightnings_dispatch(data_dir, tmp_path, hook):
    """A profiler set by the user still sees every callback's hook (Lightning's dispatch)."""
    args = [*quick(data_dir, tmp_path), "--trainer.max_steps", "2", "--trainer.profiler", "simple"]
    cli = run(["fit", "--config", LENET, *args, "--trainer.limit_val_batches", "0"])
    recorded = cli.trainer.profiler.recorded_durations
    for callback in cli.trainer.callbacks:
        assert len(recorded[f"[Callback]{callback.state_key}.{hook}"]) == 2

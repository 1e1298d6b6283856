"""Running groupwise from Python leaves Lightning's callback hook dispatch as it found it.

A user who wraps ``lightning.pytorch.trainer.call._call_callback_hooks`` (to trace or time
hooks) and then calls ``groupwise.cli.run(...)`` sees every dispatch of the run, and a
later plain ``lightning.Trainer`` fit in the same process goes through the same function.
(Until issue 21, ``groupwise.hook_dispatch`` replaced that function for the whole process.)
"""

import sys
from collections import Counter

from cli_run import LENET, quick
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.trainer import call

from groupwise.cli import main, run


def test_a_users_wrapper_of_the_hook_dispatch_sees_every_hook_and_stays(
    data_dir, tmp_path, monkeypatch
):
    lightnings = call._call_callback_hooks
    seen: Counter[str] = Counter()

    def tracing(trainer, hook_name, *args, **kwargs):
        seen[hook_name] += 1
        return lightnings(trainer, hook_name, *args, **kwargs)

    monkeypatch.setattr(call, "_call_callback_hooks", tracing)
    run(["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs=2")])
    assert call._call_callback_hooks is tracing  # the module attribute as it was
    # 2 epochs of 3 steps: each step dispatches its hooks once through the user's wrapper
    assert seen["on_train_batch_start"] == 6 and seen["on_before_zero_grad"] == 6
    assert seen["on_train_epoch_end"] >= 2 and seen["on_fit_end"] == 1

    seen.clear()  # a plain Trainer fit after groupwise's, in the same process
    trainer = Trainer(
        default_root_dir=tmp_path / "plain",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(BoringModel())
    assert seen["on_train_batch_start"] == 2 and seen["on_fit_end"] == 1


def test_main_with_an_argv_leaves_the_dispatch_as_it_found_it(data_dir, tmp_path, monkeypatch):
    before = call._call_callback_hooks
    argv = ["groupwise", "fit", "--config", LENET, *quick(data_dir, tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--trainer.max_steps=1"])
    main()
    assert call._call_callback_hooks is before

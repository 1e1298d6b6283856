"""FiniteLossGuard's host reads: on the logging steps (the trainer's ``log_every_n_steps``)
by default, on every device, or every N steps when asked, and the first bad step is still
the one named."""

from types import SimpleNamespace

import pytest
import torch
from cli_run import LENET, quick
from lightning.pytorch.strategies import SingleDeviceStrategy
from op_count import OpCount

from groupwise.callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from groupwise.cli import run


@pytest.fixture
def host_reads(monkeypatch) -> list[int]:
    """Counts ``int(tensor)``, ``float(tensor)``, ``bool(tensor)`` and ``tensor.item()``
    calls (host reads)."""
    reads: list[int] = []
    to_int, to_float, to_bool = torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__bool__
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "__int__", lambda t: reads.append(1) or to_int(t))
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.append(1) or to_float(t))
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(1) or to_bool(t))
    monkeypatch.setattr(torch.Tensor, "item", lambda t: reads.append(1) or item(t))
    return reads


def fake_trainer(log_every_n_steps: int = 50) -> SimpleNamespace:
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([{"params": [weight], "name": "features"}], lr=0.25)
    return SimpleNamespace(
        current_epoch=0,
        global_step=0,
        optimizers=[optimizer],
        checkpoint_callbacks=[],
        log_every_n_steps=log_every_n_steps,
        strategy=SingleDeviceStrategy("cpu"),
        world_size=1,
        global_rank=0,
    )


def steps(guard: FiniteLossGuard, trainer: SimpleNamespace, losses: list[float]) -> None:
    for loss in losses:
        trainer.global_step += 1
        guard.on_train_batch_end(trainer, None, torch.tensor(loss), None, trainer.global_step - 1)


def test_default_reads_on_the_logging_steps(host_reads):
    guard, trainer = FiniteLossGuard(), fake_trainer(log_every_n_steps=3)
    steps(guard, trainer, [1.0, 0.5, 0.25, 0.125])
    assert len(host_reads) == 1  # after step 3, the first logging step
    with pytest.raises(NonFiniteLossError, match="global step 6;"):
        steps(guard, trainer, [0.1, float("inf")])  # read after step 6


def test_every_step_when_the_trainer_logs_every_step(host_reads):
    guard, trainer = FiniteLossGuard(), fake_trainer(log_every_n_steps=1)
    steps(guard, trainer, [1.0, 0.5, 0.25])
    assert len(host_reads) == 3
    with pytest.raises(NonFiniteLossError, match="global step 4;"):
        steps(guard, trainer, [float("inf")])


def test_every_n_steps_reads_once_per_n_and_names_the_first_bad_step(host_reads):
    guard, trainer = FiniteLossGuard(check_every_n_steps=4), fake_trainer(log_every_n_steps=1)
    steps(guard, trainer, [1.0] * 8)
    assert len(host_reads) == 2  # after steps 4 and 8
    steps(guard, trainer, [1.0, float("nan"), float("inf")])  # steps 9-11: no read yet
    assert len(host_reads) == 2
    with pytest.raises(NonFiniteLossError) as error:
        steps(guard, trainer, [2.0])  # step 12: the read finds step 10, the first bad one
    assert str(error.value).startswith(
        "training loss is nan at epoch 0, batch 9, global step 10; learning rates: features=0.25."
    )


@pytest.mark.parametrize("hook", ["on_validation_start", "on_train_epoch_end", "on_train_end"])
def test_a_pending_bad_loss_is_read_before_validation_and_at_ends(hook):
    guard, trainer = FiniteLossGuard(check_every_n_steps=50), fake_trainer()
    steps(guard, trainer, [1.0, float("nan")])
    with pytest.raises(NonFiniteLossError, match="global step 2;"):
        getattr(guard, hook)(trainer, None)


def test_a_pending_bad_loss_stops_a_checkpoint_save():
    guard, trainer = FiniteLossGuard(check_every_n_steps=50), fake_trainer()
    steps(guard, trainer, [float("nan")])
    with pytest.raises(NonFiniteLossError, match="none written yet"):
        guard.on_save_checkpoint(trainer, None, {})


def test_bad_check_every_n_steps():
    with pytest.raises(ValueError, match="positive integer or None, got 0"):
        FiniteLossGuard(check_every_n_steps=0)


def test_an_ordinary_step_costs_no_tensor_op(data_dir, tmp_path, monkeypatch):
    """Between reads the guard only keeps the step's loss (it was 12 small tensor ops per
    step, each a kernel launch on a GPU). A real fit: 3 steps per epoch, 2 epochs, a read
    after every second step (global steps 2, 4, 6) and at each epoch's end."""
    ops: dict[int, int] = {}
    original = FiniteLossGuard.on_train_batch_end

    def counted(self, trainer, *args):
        with OpCount() as count:
            original(self, trainer, *args)
        ops[trainer.global_step] = count.ops

    monkeypatch.setattr(FiniteLossGuard, "on_train_batch_end", counted)
    run(["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs=2"),
         "--trainer.log_every_n_steps=2"])  # fmt: skip
    assert sorted(ops) == [1, 2, 3, 4, 5, 6]
    assert {step: n for step, n in ops.items() if step % 2} == {1: 0, 3: 0, 5: 0}
    assert all(ops[step] > 0 for step in (2, 4, 6))  # the reads

"""GroupStats: hand-computed values on a tiny model, and the tags and steps of a real run."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_run import LENET, groupwise, quick, scalars
from fake_cifar import write_image_folder
from lightning.pytorch.utilities import grad_norm

from groupwise.callbacks.group_stats import GroupStats
from groupwise.cli import run


class Recorder:
    def __init__(self) -> None:
        self.logged: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.logged.append((step, metrics))


def _step(callback, trainer, optimizer) -> None:
    """One optimizer step with the hooks in Lightning's order."""
    callback.on_before_optimizer_step(trainer, None, optimizer)
    optimizer.step()
    trainer.global_step += 1
    callback.on_train_batch_end(trainer, None, None, None, 0)


def test_values_equal_hand_computed_ones():
    w = torch.nn.Parameter(torch.tensor([0.0, 3.0, 4.0]))  # norm 5
    v = torch.nn.Parameter(torch.ones(2, 2))  # norm 2
    unused = torch.nn.Parameter(torch.zeros(3))  # no gradient: not in the grad norm
    w.grad = torch.tensor([1.0, 2.0, 2.0])  # norm 3
    v.grad = torch.full((2, 2), 0.5)  # norm 1
    optimizer = torch.optim.SGD(
        [{"name": "a", "params": [w], "lr": 0.5}, {"name": "b", "params": [v, unused]}], lr=0.1
    )
    recorder = Recorder()
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, loggers=[recorder])
    callback = GroupStats(every_n_steps=3)
    _step(callback, trainer, optimizer)
    ((step, metrics),) = recorder.logged
    assert step == 0
    assert metrics == pytest.approx(
        {
            "groups/a/grad_norm": 3.0,
            "groups/a/param_norm": 5.0,
            "groups/a/update_ratio": 0.5 * 3.0 / 5.0,  # ||lr * g|| / ||w||
            "groups/b/grad_norm": 1.0,
            "groups/b/param_norm": 2.0,
            "groups/b/update_ratio": 0.1 * 1.0 / 2.0,
        },
        rel=1e-6,
    )
    # Steps 1 and 2 log nothing and copy nothing; step 3 logs again.
    for _ in range(2):
        callback.on_before_optimizer_step(trainer, None, optimizer)
        assert callback._step is None and callback._before == []
        optimizer.step()
        trainer.global_step += 1
        callback.on_train_batch_end(trainer, None, None, None, 0)
    _step(callback, trainer, optimizer)
    assert [s for s, _ in recorder.logged] == [0, 3]
    # After 3 steps of -lr * g: w = [0, 3, 4] - 1.5 * [1, 2, 2]
    assert recorder.logged[1][1]["groups/a/param_norm"] == pytest.approx(math.hypot(-1.5, 0.0, 1.0))


def test_group_grad_norms_are_what_lightning_grad_norm_lacks():
    """Lightning's grad_norm gives one norm per parameter and a total; the groups' norms
    are the L2 norms of their parameters' norms, and together make that total."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    net(torch.randn(5, 4)).square().sum().backward()
    optimizer = torch.optim.SGD(
        [
            {"name": "first", "params": list(net[0].parameters())},
            {"name": "last", "params": list(net[2].parameters())},
        ],
        lr=0.1,
    )
    recorder = Recorder()
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, loggers=[recorder])
    _step(GroupStats(every_n_steps=1), trainer, optimizer)  # before the step: net's grads
    ((_, metrics),) = recorder.logged
    lightning = grad_norm(net, norm_type=2)
    assert sorted(lightning) == [
        "grad_2.0_norm/0.bias",
        "grad_2.0_norm/0.weight",
        "grad_2.0_norm/2.bias",
        "grad_2.0_norm/2.weight",
        "grad_2.0_norm_total",
    ]  # per parameter and total: no group
    for group, layer in (("first", "0"), ("last", "2")):
        per_param = [lightning[f"grad_2.0_norm/{layer}.{n}"] for n in ("weight", "bias")]
        assert metrics[f"groups/{group}/grad_norm"] == pytest.approx(math.hypot(*per_param))
    total = math.hypot(metrics["groups/first/grad_norm"], metrics["groups/last/grad_norm"])
    assert total == pytest.approx(float(lightning["grad_2.0_norm_total"]))


def test_gradient_accumulation_waits_for_the_stepping_batch():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    w.grad = torch.tensor([1.0, 0.0])
    optimizer = torch.optim.SGD([{"name": "a", "params": [w]}], lr=1.0)
    recorder = Recorder()
    trainer = SimpleNamespace(global_step=0, is_global_zero=True, loggers=[recorder])
    callback = GroupStats(every_n_steps=1)
    callback.on_train_batch_end(trainer, None, None, None, 0)  # an accumulating batch
    assert recorder.logged == []
    _step(callback, trainer, optimizer)
    assert recorder.logged[0][1]["groups/a/update_ratio"] == pytest.approx(1.0 / 5.0)


def test_only_rank_zero_computes():
    w = torch.nn.Parameter(torch.ones(2))
    w.grad = torch.ones(2)
    optimizer = torch.optim.SGD([w], lr=1.0)
    recorder = Recorder()
    trainer = SimpleNamespace(global_step=0, is_global_zero=False, loggers=[recorder])
    _step(GroupStats(every_n_steps=1), trainer, optimizer)
    assert recorder.logged == []


def test_every_n_steps_must_be_positive():
    with pytest.raises(ValueError, match="every_n_steps must be a positive integer, got 0"):
        GroupStats(every_n_steps=0)


def test_fit_logs_each_group_at_steps_0_n_2n(tmp_path):
    data_dir = write_image_folder(tmp_path / "cifar", n_per_class=8)
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "3")  # 3 steps per epoch
    # GroupStats is a default callback, configured under its own key.
    cli = run(["fit", "--config", LENET, *args, "--group_stats.every_n_steps", "2"])
    assert cli.trainer.global_step == 9
    tags = scalars(Path(cli.trainer.log_dir))
    for group in ("features", "classifier"):
        for stat in ("grad_norm", "param_norm", "update_ratio"):
            points = tags[f"groups/{group}/{stat}"]
            assert [step for step, _ in points] == [0, 2, 4, 6, 8], (group, stat)
            assert all(value > 0 and math.isfinite(value) for _, value in points)
    # Step 8 is the last: the final weights are within ||dw|| of the logged pre-step ones.
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, GroupStats)]
    assert callback.last_metrics["step"] == 8
    net = cli.model.net
    for group in ("features", "classifier"):
        final = torch.linalg.vector_norm(
            torch.cat([p.detach().flatten() for p in getattr(net, group).parameters()])
        ).item()
        before = callback.last_metrics[f"groups/{group}/param_norm"]
        ratio = callback.last_metrics[f"groups/{group}/update_ratio"]
        assert before * (1 - ratio) - 1e-5 <= final <= before * (1 + ratio) + 1e-5
        assert final != pytest.approx(before, rel=1e-9, abs=0)  # the step moved the weights


@pytest.mark.slow
def test_ddp_logs_the_synchronised_gradient_norms(tmp_path):
    """Two DDP ranks on half batches log the gradient norms of one process on the whole
    batch: the hook sees the all-reduced gradients, not rank zero's own half."""
    data_dir = write_image_folder(tmp_path / "cifar", n_per_class=8)
    callback = "--group_stats.every_n_steps=1"
    logged = {}
    for name, extra in {
        "single": ["--data.batch_size", "20"],
        "ddp": ["--data.batch_size", "10", "--trainer.strategy", "ddp", "--trainer.devices", "2"],
    }.items():
        root = tmp_path / name
        args = quick(data_dir, root, "--trainer.max_epochs", "1", *extra)
        done = groupwise("fit", "--config", LENET, *args, callback)
        assert done.returncode == 0, done.stderr[-4000:]
        logged[name] = scalars(root / "lightning_logs" / "version_0")
    for group in ("features", "classifier"):
        for stat in ("grad_norm", "param_norm", "update_ratio"):
            tag = f"groups/{group}/{stat}"
            single, ddp = logged["single"][tag], logged["ddp"][tag]
            assert [s for s, _ in ddp] == [s for s, _ in single] == [0, 1, 2]
            for (_, a), (_, b) in zip(single, ddp, strict=True):
                assert b == pytest.approx(a, rel=1e-4), tag

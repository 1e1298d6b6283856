"""WarmupLinearLR: each group's own lr times a per-step factor, linear warm-up then linear
decay (torch's SequentialLR of two LinearLRs); its length set by hand or, left ``None``,
filled by the Classifier from the trainer.

Factors below are computed by hand: with ``W = round(warmup_fraction * total_steps)`` warm-up
steps, step ``k`` has factor ``start + (1 - start) * k / W`` for ``k < W``, then
``1 + (end - 1) * (k - W) / (total_steps - W)``, ``end`` from ``k = total_steps`` on.
"""

import io
import math
import re
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import ROOT, quick, scalars

from groupwise.cli import run
from groupwise.optim.schedule_length import fill_length
from groupwise.optim.warmup_linear import WarmupLinearLR

FAST = str(ROOT / "configs" / "fast.yaml")
LRS = (0.1, 6.4)  # two groups, 64x apart


def sgd(lrs: tuple[float, ...] = LRS) -> torch.optim.SGD:
    groups = [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=1.0, momentum=0.9)


def group_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [group["lr"] for group in optimizer.param_groups]


def walk(scheduler: WarmupLinearLR, steps: int) -> list[list[float]]:
    """Each group's lr at scheduler steps 0 .. steps-1, stepping as a training loop does."""
    lrs = []
    for _ in range(steps):
        lrs.append(group_lrs(scheduler.optimizer))
        assert scheduler.get_last_lr() == lrs[-1]
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


def interp_factor(step: int, total: int, fraction: float, start: float, end: float) -> float:
    """The same schedule as piecewise-linear interpolation through its corner points."""
    warmup = round(fraction * total)
    if warmup == 0:
        return float(np.interp(step, [0, total], [1.0, end]))
    return float(np.interp(step, [0, warmup, total], [start, 1.0, end]))


# (total_steps, warmup_fraction, start_factor, end_factor, factors at steps 0..len-1)
CASES = {
    "warmup 3 of 10, decay to 0": (
        10, 0.3, 0.1, 0.0, [0.1, 0.4, 0.7, 1.0, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7, 0.0, 0.0]
    ),
    "warmup 2 of 8, decay to 0.2": (
        8, 0.25, 0.5, 0.2,
        [0.5, 0.75, 1.0, 1 - 0.8 / 6, 1 - 1.6 / 6, 1 - 2.4 / 6, 1 - 3.2 / 6, 1 - 4.0 / 6, 0.2, 0.2],
    ),
    "warmup round(1.4) = 1 of 7": (
        7, 0.2, 0.1, 0.0, [0.1, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0]
    ),
    "no warmup, 5 steps": (5, 0.0, 0.1, 0.0, [1.0, 0.8, 0.6, 0.4, 0.2, 0.0, 0.0]),
    "start_factor 1": (4, 0.5, 1.0, 0.5, [1.0, 1.0, 1.0, 0.75, 0.5]),
}  # fmt: skip


@pytest.mark.parametrize("given", ["by hand", "left empty, filled from the run's length"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_group_lr_is_its_own_lr_times_the_hand_computed_factor(case, given):
    total, fraction, start, end, factors = case
    optimizer = sgd()
    if given == "by hand":
        scheduler = WarmupLinearLR(optimizer, total, fraction, start, end)
    else:  # as the Classifier builds it: total_steps None, the run's length filled in
        configured = partial(WarmupLinearLR, total_steps=None, warmup_fraction=fraction)
        configured = partial(configured, start_factor=start, end_factor=end)
        filled = fill_length(configured, total, "step")
        assert filled == {"total_steps": total}
        scheduler = configured(optimizer, **filled)
    assert scheduler.total_steps == total
    lrs = walk(scheduler, len(factors))
    for step, (factor, (low, high)) in enumerate(zip(factors, lrs, strict=True)):
        assert low == pytest.approx(0.1 * factor, abs=1e-12), step
        assert high == pytest.approx(6.4 * factor, abs=1e-12), step
        assert factor == pytest.approx(interp_factor(step, total, fraction, start, end))
        if factor > 0:
            assert high / low == pytest.approx(64.0, rel=1e-12), step  # the ratio holds


def test_is_torchs_sequential_lr_of_two_linear_lrs():
    """The same lrs at every step, to rounding (torch's LinearLR multiplies step by step)."""
    optimizer = sgd()
    scheduler = WarmupLinearLR(optimizer, 10, 0.3, 0.1, 0.0)
    reference_optimizer = sgd()
    reference = torch.optim.lr_scheduler.SequentialLR(
        reference_optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(reference_optimizer, 0.1, 1.0, 3),
            torch.optim.lr_scheduler.LinearLR(reference_optimizer, 1.0, 0.0, 7),
        ],
        [3],
    )
    ours, torchs = walk(scheduler, 12), walk(reference, 12)
    assert [pytest.approx(lrs, rel=1e-12, abs=1e-15) for lrs in ours] == torchs


def test_without_a_length_outside_the_classifier_is_a_clear_error():
    with pytest.raises(ValueError, match=re.escape("WarmupLinearLR needs total_steps")):
        WarmupLinearLR(sgd())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"warmup_fraction": 1.0}, "warmup_fraction must be in [0, 1), got 1.0"),
        ({"warmup_fraction": -0.1}, "warmup_fraction must be in [0, 1), got -0.1"),
        ({"start_factor": 0.0}, "start_factor must be in (0, 1], got 0.0"),
        ({"start_factor": 1.5}, "start_factor must be in (0, 1], got 1.5"),
        ({"end_factor": -0.5}, "end_factor must be in [0, 1], got -0.5"),
        ({"end_factor": 2.0}, "end_factor must be in [0, 1], got 2.0"),
        ({"total_steps": 0}, "total_steps must be a positive number of steps, got 0"),
        ({"total_steps": -3}, "total_steps must be a positive number of steps, got -3"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        WarmupLinearLR(sgd(), **{"total_steps": 10} | kwargs)


def test_state_dict_round_trip_mid_run_continues_with_identical_lrs():
    total, warmup = 12, 0.25
    optimizer = sgd()
    scheduler = WarmupLinearLR(optimizer, total, warmup, start_factor=0.2, end_factor=0.1)
    walk(scheduler, 5)
    buffer = io.BytesIO()  # through torch.save, as in a checkpoint
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    # Rebuilt as the Classifier rebuilds it on resume: length from the (new) trainer first,
    # then Lightning loads the optimizer and scheduler states; the saved length wins.
    optimizer2 = sgd()
    scheduler2 = WarmupLinearLR(optimizer2, 99, warmup, start_factor=0.2, end_factor=0.1)
    optimizer2.load_state_dict(saved["optimizer"])
    scheduler2.load_state_dict(saved["scheduler"])
    assert scheduler2.total_steps == total and scheduler2.last_epoch == 5
    assert group_lrs(optimizer2) == group_lrs(optimizer)
    assert walk(scheduler2, 9) == walk(scheduler, 9)  # steps 5..13, identical floats
    assert group_lrs(optimizer2) == pytest.approx([0.1 * lr for lr in LRS])


# ---- through Lightning: the Classifier sets the length -----------------------------------

TINY = ["--model.net.init_args.widths", "[8, 16, 16]", "--model.net.init_args.stem_width", "8"]
GROUPS = (  # fast.yaml's groups with the norm group at 64x the weights' lr: 6.4 and 0.1
    '[{"name": "norm", "params": ["*.norm.*"], "lr_scale": 64.0},'
    ' {"name": "weights", "params": ["*"]}]'
)


def fast(data_dir: Path, root: Path, *extra: str) -> list[str]:
    """`fit` of configs/fast.yaml with a tiny FastNet on the 60 fake training images."""
    args = ["--model.param_groups", GROUPS, "--model.optimizer.init_args.lr", "0.1", *TINY]
    return ["fit", "--config", FAST, *quick(data_dir, root, *args, *extra)]


def test_per_step_length_is_the_trainers_optimizer_steps_and_lrs_follow(data_dir, tmp_path):
    extra = ["--data.batch_size", "8", "--trainer.max_epochs", "2"]
    fit = run(fast(data_dir, tmp_path, *extra))  # lrs logged at the schedule's own interval
    total = 2 * math.ceil(60 / 8)  # 2 epochs of 8 batches (7 of 8 images, one of 4)
    scheduler = fit.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, WarmupLinearLR)
    assert scheduler.total_steps == fit.trainer.estimated_stepping_batches == total == 16
    assert fit.trainer.global_step == scheduler.last_epoch == 16

    # fast.yaml: warm-up over round(0.2 * 16) = 3 steps from 0.001, then down to 0.
    logged = scalars(Path(fit.trainer.logger.log_dir))
    factors = [interp_factor(k, 16, 0.2, 0.001, 0.0) for k in range(16)]
    assert factors[:4] == pytest.approx([0.001, 0.001 + 0.999 / 3, 0.001 + 1.998 / 3, 1.0])
    assert factors[4:] == pytest.approx([1 - k / 13 for k in range(1, 13)])
    for tag, lr in (("lr-SGD/norm", 6.4), ("lr-SGD/weights", 0.1)):
        steps, values = zip(*logged[tag], strict=True)
        assert list(steps) == list(range(16)), tag
        assert list(values) == pytest.approx([lr * f for f in factors], rel=1e-6), tag
    norms, weights = ([value for _, value in logged[f"lr-SGD/{g}"]] for g in ("norm", "weights"))
    assert [n / w for n, w in zip(norms, weights, strict=True)] == pytest.approx([64.0] * 16)


def test_a_logging_interval_the_user_sets_wins_over_the_schedules(data_dir, tmp_path):
    extra = ["--trainer.max_epochs", "2", "--lr_monitor.logging_interval", "epoch"]
    fit = run(fast(data_dir, tmp_path, *extra))
    logged = scalars(Path(fit.trainer.logger.log_dir))
    assert [step for step, _ in logged["lr-SGD/weights"]] == [0, 3]  # 3 steps per epoch


def test_per_epoch_length_is_max_epochs(data_dir, tmp_path):
    extra = ["--model.scheduler_interval", "epoch", "--trainer.max_epochs", "3"]
    fit = run(fast(data_dir, tmp_path, *extra))
    scheduler = fit.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 3 and scheduler.last_epoch == 3
    # warm-up round(0.2 * 3) = 1 epoch: factors 0.001, 1, 0.5; logged once per epoch at the
    # epoch's first step (3 batches of 20 per epoch)
    logged = scalars(Path(fit.trainer.logger.log_dir))
    expected = [(0, 0.0001), (3, 0.1), (6, 0.05)]
    for tag, scale in (("lr-SGD/weights", 1.0), ("lr-SGD/norm", 64.0)):
        assert [step for step, _ in logged[tag]] == [0, 3, 6]
        values = [value for _, value in logged[tag]]
        assert values == pytest.approx([scale * lr for _, lr in expected], rel=1e-6), tag


def test_max_steps_alone_gives_the_length(data_dir, tmp_path):
    extra = ["--trainer.max_epochs", "-1", "--trainer.max_steps", "5"]
    fit = run(fast(data_dir, tmp_path, *extra))
    scheduler = fit.trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 5 == fit.trainer.global_step


@pytest.mark.parametrize(
    "extra",
    [
        ["--trainer.max_epochs", "-1"],
        ["--model.scheduler_interval", "epoch", "--trainer.max_epochs", "null"]
        + ["--trainer.max_steps", "4"],
    ],
    ids=["step, max_epochs -1", "epoch, only max_steps"],
)
def test_a_run_without_a_finite_length_is_refused_before_training(data_dir, tmp_path, extra):
    with pytest.raises(ValueError, match=r"total_steps: null needs a finite run") as error:
        run(fast(data_dir, tmp_path, *extra))
    assert "give total_steps" in str(error.value)
    assert not list(tmp_path.rglob("*.ckpt"))

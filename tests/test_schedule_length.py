"""Scheduler lengths against the run, through the real Trainer: a length left empty is
filled from the trainer, a length given that does not match the run is a warning (or, where
torch would stop mid-run, an error) naming both numbers."""

import math
import re
import warnings
from pathlib import Path

import pytest
from cli_run import LENET, quick, scalars

from groupwise.cli import run

COSINE = "torch.optim.lr_scheduler.CosineAnnealingLR"


def lenet(data_dir: Path, root: Path, epochs: int, *extra: str) -> list[str]:
    """`fit` of configs/lenet.yaml (features at 0.005, classifier at 0.05) for ``epochs``
    epochs of one batch (the 60 training images of the fake data) each."""
    args = ["--trainer.max_epochs", str(epochs), "--data.batch_size", "60", *extra]
    return ["fit", "--config", LENET, *quick(data_dir, root, *args)]


def scheduler(class_path: str, **init_args) -> list[str]:
    args = ["--model.scheduler", class_path]
    for key, value in init_args.items():
        args += [f"--model.scheduler.init_args.{key}", str(value)]
    return args


def length_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if "the run" in str(w.message)]


def epoch_lrs(run_dir: Path, group: str) -> list[float]:
    return [value for _, value in scalars(run_dir)[f"lr-SGD/{group}"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            scheduler(COSINE, T_max=2),
            "CosineAnnealingLR: T_max=2 but the run has 4 epochs "
            "(scheduler_interval: epoch); set T_max: 4, or use "
            "groupwise.optim.CosineAnnealingLR and leave T_max empty to take the run's length",
        ),
        (
            scheduler("torch.optim.lr_scheduler.PolynomialLR", total_iters=6),
            "PolynomialLR: total_iters=6 but the run has 4 epochs "
            "(scheduler_interval: epoch); set total_iters: 4, or leave total_iters empty "
            "(null) to take the run's length",
        ),
        (
            ["--model.scheduler.init_args.milestones", "[1, 4, 6]"],
            "MultiStepLR: milestones [4, 6] are at or past the run's 4 epochs "
            "(scheduler_interval: epoch), so they never take effect",
        ),
        (
            scheduler("groupwise.optim.WarmupLinearLR", total_steps=3),
            "WarmupLinearLR: total_steps=3 but the run has 4 epochs "
            "(scheduler_interval: epoch); set total_steps: 4, or leave total_steps empty "
            "(null) to take the run's length",
        ),
    ],
    ids=["cosine", "polynomial", "multistep", "warmup_linear"],
)
def test_a_length_that_does_not_match_the_run_warns_with_both_numbers(
    data_dir, tmp_path, args, message
):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run(lenet(data_dir, tmp_path, 4, *args))
    assert length_warnings(record) == [message]


def test_a_matching_length_does_not_warn(data_dir, tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run(lenet(data_dir, tmp_path, 3, *scheduler(COSINE, T_max=3)))
    assert length_warnings(record) == []


def test_one_cycle_shorter_than_the_run_stops_before_training(data_dir, tmp_path):
    args = scheduler("torch.optim.lr_scheduler.OneCycleLR", max_lr=0.01, total_steps=3)
    with pytest.raises(ValueError) as error:
        run(lenet(data_dir, tmp_path, 4, *args, "--model.scheduler_interval", "step"))
    assert str(error.value) == (
        "OneCycleLR: total_steps=3 but the run has 4 optimizer steps "
        "(scheduler_interval: step): torch stops the run with an error after step 3; set "
        "total_steps: 4, or leave total_steps empty (null) to take the run's length"
    )
    assert not list(tmp_path.rglob("*.ckpt"))


def test_an_empty_cosine_t_max_is_the_number_of_epochs(data_dir, tmp_path):
    fit = run(lenet(data_dir, tmp_path, 3, *scheduler("groupwise.optim.CosineAnnealingLR")))
    assert fit.trainer.lr_scheduler_configs[0].scheduler.T_max == 3
    run_dir = Path(fit.trainer.log_dir)
    cosine = [(1 + math.cos(math.pi * epoch / 3)) / 2 for epoch in range(3)]  # 1, 0.75, 0.25
    assert epoch_lrs(run_dir, "features") == pytest.approx([0.005 * f for f in cosine], rel=1e-6)
    assert epoch_lrs(run_dir, "classifier") == pytest.approx([0.05 * f for f in cosine], rel=1e-6)


def test_an_empty_polynomial_total_iters_is_the_number_of_epochs(data_dir, tmp_path):
    args = scheduler("torch.optim.lr_scheduler.PolynomialLR", total_iters="null", power=2.0)
    fit = run(lenet(data_dir, tmp_path, 4, *args))
    assert fit.trainer.lr_scheduler_configs[0].scheduler.total_iters == 4
    factors = [(1 - epoch / 4) ** 2 for epoch in range(4)]
    lrs = epoch_lrs(Path(fit.trainer.log_dir), "classifier")
    assert lrs == pytest.approx([0.05 * f for f in factors], rel=1e-6)


def test_an_empty_length_without_a_finite_run_is_refused(data_dir, tmp_path):
    args = scheduler("torch.optim.lr_scheduler.OneCycleLR", max_lr=0.01)
    extra = ["--model.scheduler_interval", "step", "--trainer.max_epochs", "-1"]
    with pytest.raises(ValueError, match=re.escape("OneCycleLR with total_steps: null needs")):
        run(lenet(data_dir, tmp_path, 1, *args, *extra))

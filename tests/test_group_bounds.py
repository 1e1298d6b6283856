"""Schedulers that set every group to one lr (OneCycleLR; CyclicLR with scalar bounds): each
group's bounds are scaled by the group's configured ratio to the optimizer's lr, so the
ratios hold at every step of a real run."""

from functools import partial
from pathlib import Path

import pytest
import torch
from cli_run import LENET, ROOT, groupwise, quick, scalars
from lightning.pytorch import Trainer
from torch.optim.lr_scheduler import CyclicLR, OneCycleLR

from groupwise.classifier import Classifier
from groupwise.cli import run
from groupwise.data.cifar10 import CIFAR10DataModule
from groupwise.errors import ConfigError
from groupwise.nets import LeNet5

FAST_MUON = str(ROOT / "configs" / "fast_muon.yaml")
LENET_GROUPS = [  # configs/lenet.yaml: features at the optimizer's lr, classifier at 10x
    {"name": "features", "modules": ["features"]},
    {"name": "classifier", "modules": ["classifier"], "lr_scale": 10.0},
]


def replay(scheduler_class, lrs: list[float], steps: int, **kwargs) -> list[list[float]]:
    """Each group's lr at steps 0 .. steps-1 of ``scheduler_class`` on an SGD whose groups
    start at ``lrs``, as a training loop steps it."""
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs]
    optimizer = torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)
    scheduler = scheduler_class(optimizer, **kwargs)
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return [list(lrs) for lrs in zip(*seen, strict=True)]


CASES = {
    "OneCycleLR": (
        ["--model.scheduler.init_args.max_lr", "0.1"],
        partial(replay, OneCycleLR, max_lr=[0.1, 1.0], total_steps=6),
    ),
    "CyclicLR": (
        ["--model.scheduler.init_args.base_lr", "0.001", "--model.scheduler.init_args.max_lr"]
        + ["0.01", "--model.scheduler.init_args.step_size_up", "2"],
        partial(replay, CyclicLR, base_lr=[0.001, 0.01], max_lr=[0.01, 0.1], step_size_up=2),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_the_groups_ratio_holds_at_every_step_of_a_run(data_dir, tmp_path, name):
    args, expected = CASES[name]
    fit = run(
        ["fit", "--config", LENET]
        + quick(data_dir, tmp_path, "--trainer.max_epochs", "2", "--model.scheduler")
        + [f"torch.optim.lr_scheduler.{name}", *args, "--model.scheduler_interval", "step"]
    )
    assert fit.trainer.global_step == 6  # 2 epochs of 3 batches
    logged = scalars(Path(fit.trainer.log_dir))
    features, classifier = expected([0.005, 0.05], 6)
    assert logged["lr-SGD/features"] == [
        (step, pytest.approx(lr, rel=1e-6)) for step, lr in enumerate(features)
    ]
    assert logged["lr-SGD/classifier"] == [
        (step, pytest.approx(lr, rel=1e-6)) for step, lr in enumerate(classifier)
    ]
    ratios = [
        c / f
        for (_, f), (_, c) in zip(
            *(logged[f"lr-SGD/{g}"] for g in ("features", "classifier")), strict=True
        )
    ]
    assert ratios == pytest.approx([10.0] * 6, rel=1e-6)


def test_a_list_of_bounds_is_used_as_given(data_dir, tmp_path):
    fit = run(
        ["fit", "--config", LENET]
        + quick(data_dir, tmp_path, "--trainer.max_epochs", "1", "--model.scheduler")
        + ["torch.optim.lr_scheduler.OneCycleLR", "--model.scheduler.init_args.max_lr"]
        + ["[0.2, 0.3]", "--model.scheduler_interval", "step"]
    )
    groups = fit.trainer.optimizers[0].param_groups
    assert [group["max_lr"] for group in groups] == [0.2, 0.3]


def test_a_callable_that_gives_every_group_one_lr_is_an_error_naming_the_fix(data_dir, tmp_path):
    model = Classifier(
        LeNet5(),
        optimizer=partial(torch.optim.SGD, lr=0.005, momentum=0.9),
        scheduler=lambda optimizer: OneCycleLR(optimizer, max_lr=0.1, total_steps=3),
        scheduler_interval="step",
        param_groups=LENET_GROUPS,
    )
    data = CIFAR10DataModule(str(data_dir), download=False, val_size=20, batch_size=20)
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(ValueError) as error:
        trainer.fit(model, datamodule=data)
    assert str(error.value) == (
        "OneCycleLR gives every group the same max_lr, 0.1, so the groups' lrs lose their "
        "ratios to the optimizer's lr 0.005 (features 1, classifier 10): give max_lr one "
        "value per group, in this order: [0.1, 1.0]; or configure the scheduler by class "
        "(YAML class_path, or functools.partial), whose single max_lr is then scaled per group"
    )
    assert trainer.global_step == 0


def one_cycle_momenta(steps: int, **kwargs) -> list[float]:
    """The momentum of a lone SGD group at steps 0 .. steps-1 of torch's ``OneCycleLR``."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    scheduler = OneCycleLR(optimizer, total_steps=steps, **kwargs)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return seen


def test_cycled_momentum_keeps_each_group_s_ratio_to_the_optimizer_s(data_dir, tmp_path):
    """configs/fast_muon.yaml: Muon filters at momentum 0.8, SGD (norm, head) at 0.9.
    OneCycleLR's momentum bounds (0.85 to 0.95) are scaled by each group's ratio to the
    optimizer's momentum, as max_lr is by the lr ratio: the filters cycle at 0.8/0.9 of the
    SGD groups at every step (torch alone gives all three one curve)."""
    fit = run(
        ["fit", "--config", FAST_MUON]
        + quick(data_dir, tmp_path, "--trainer.max_epochs", "2", "--model.channels_last")
        + ["false", "--model.scheduler", "torch.optim.lr_scheduler.OneCycleLR"]
        + ["--model.scheduler.init_args.max_lr", "0.1"]
    )
    assert fit.trainer.global_step == 6
    logged = scalars(Path(fit.trainer.log_dir))
    momenta = {"filters": [v for _, v in logged["lr-Muon/filters-momentum"]]}
    momenta["norm"] = [v for _, v in logged["lr-SGD/norm-momentum"]]
    default = [v for _, v in logged["lr-SGD/default-momentum"]]
    assert default == pytest.approx(one_cycle_momenta(6, max_lr=0.1), rel=1e-6)
    assert momenta["norm"] == default
    assert momenta["filters"] == pytest.approx([m * 0.8 / 0.9 for m in default], rel=1e-6)


ADAMW_HEAD = (
    '[{"name": "features", "modules": ["features"]}, {"name": "classifier", "modules": '
    '["classifier"], "optimizer": "torch.optim.AdamW"}]'
)


def test_cycled_momentum_over_groups_that_read_different_keys_is_one_error(data_dir, tmp_path):
    """An AdamW group under an SGD default: torch would write a ``momentum`` key that AdamW
    never reads and leave its ``betas`` fixed."""
    with pytest.raises(ConfigError) as error:
        run(
            ["fit", "--config", LENET]
            + quick(data_dir, tmp_path, "--model.param_groups", ADAMW_HEAD, "--model.scheduler")
            + ["torch.optim.lr_scheduler.OneCycleLR", "--model.scheduler.init_args.max_lr"]
            + ["0.1", "--model.scheduler_interval", "step"]
        )
    assert str(error.value) == (
        "OneCycleLR with cycle_momentum writes one key into every group, momentum (as SGD, "
        "the model's optimizer, reads it), but the groups' optimizers read different keys "
        "(features: momentum 0.9 (SGD), classifier: betas[0] 0.9 (AdamW)): set "
        "cycle_momentum: false, so that each group keeps its own momentum"
    )
    assert not (tmp_path / "lightning_logs").exists()


def test_an_adamw_default_with_a_muon_group_is_one_error_not_a_key_error(data_dir, tmp_path):
    groups = (
        '[{"name": "features", "params": ["features.0.weight", "features.3.weight"], '
        '"optimizer": "groupwise.optim.Muon"}]'
    )
    result = groupwise(
        "fit", "--config", LENET,
        *quick(data_dir, tmp_path, "--model.param_groups", groups, "--model.optimizer"),
        "torch.optim.AdamW", "--model.scheduler", "torch.optim.lr_scheduler.CyclicLR",
        "--model.scheduler.init_args.base_lr", "0.001", "--model.scheduler.init_args.max_lr",
        "0.01", "--model.scheduler_interval", "step",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: CyclicLR with cycle_momentum writes one key into every group, betas[0] (as "
        "AdamW, the model's optimizer, reads it), but the groups' optimizers read different "
        "keys (features: momentum 0.95 (Muon), default: betas[0] 0.9 (AdamW)): set "
        "cycle_momentum: false, so that each group keeps its own momentum"
    )
    assert not (tmp_path / "lightning_logs").exists()

"""SGDL1L2: torch.optim.SGD's steps plus an L1 term, a proper Optimizer, usable from the CLI."""

import copy
import io
from pathlib import Path

import pytest
import torch
from fake_cifar import write_image_folder
from torch import nn

from groupwise.cli import run
from groupwise.optim.sgd_l1l2 import SGDL1L2

LENET = str(Path(__file__).resolve().parents[1] / "configs" / "lenet.yaml")

VARIANTS = [
    {"momentum": 0.0},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.9, "nesterov": True},
]


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 5, generator=generator), torch.randint(0, 3, (16,), generator=generator))
        for _ in range(count)
    ]


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch) -> None:
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(batch[0]), batch[1]).backward()
    optimizer.step()


def reference_step(weights, grads, buffers, group) -> None:
    """The update rule, one tensor at a time, in float64 (``weights`` changed in place)."""
    momentum, dampening = group.get("momentum", 0.0), group.get("dampening", 0.0)
    for i, (w, grad) in enumerate(zip(weights, grads, strict=True)):
        d = grad.double() + group["weight_decay_l2"] * w + group["weight_decay_l1"] * torch.sign(w)
        if momentum:
            buffers[i] = (
                d.clone() if buffers[i] is None else momentum * buffers[i] + (1 - dampening) * d
            )
            d = d + momentum * buffers[i] if group.get("nesterov") else buffers[i]
        w -= group["lr"] * d


@pytest.mark.parametrize("variant", VARIANTS)
def test_without_l1_it_is_torch_sgd_step_for_step(variant):
    ours, theirs = small_model(), small_model()
    sgd_l1l2 = SGDL1L2(ours.parameters(), lr=0.1, weight_decay_l2=1e-2, **variant)
    sgd = torch.optim.SGD(theirs.parameters(), lr=0.1, weight_decay=1e-2, foreach=False, **variant)
    for batch in batches(5):
        train_step(ours, sgd_l1l2, batch)
        train_step(theirs, sgd, batch)
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_with_l1_it_matches_a_float64_reference(variant):
    model = small_model()
    group = {"lr": 0.1, "weight_decay_l1": 3e-2, "weight_decay_l2": 1e-2, **variant}
    optimizer = SGDL1L2(model.parameters(), **group)
    weights = [p.detach().double().clone() for p in model.parameters()]
    buffers = [None] * len(weights)
    for batch in batches(5):
        train_step(model, optimizer, batch)
        reference_step(weights, [p.grad for p in model.parameters()], buffers, group)
    for p, w in zip(model.parameters(), weights, strict=True):
        torch.testing.assert_close(p.double(), w, rtol=1e-6, atol=1e-7)


def test_l1_step_by_hand():
    """No gradient: each weight moves lr * l1 towards zero; sign(0) = 0 leaves 0 alone."""
    w = nn.Parameter(torch.tensor([0.5, -0.25, 0.0]))
    w.grad = torch.zeros(3)
    SGDL1L2([w], lr=0.5, weight_decay_l1=0.25).step()
    assert torch.equal(w.detach(), torch.tensor([0.375, -0.125, 0.0]))


def test_step_returns_the_closure_loss():
    model = small_model()
    optimizer = SGDL1L2(model.parameters(), lr=0.1)
    x, y = batches(1)[0]

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    before = closure().item()
    loss = optimizer.step(closure)
    assert loss.item() == before
    assert nn.functional.cross_entropy(model(x), y).item() < before


def test_state_dict_round_trip_resumes_exactly():
    options = {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay_l1": 1e-2}
    straight = small_model()
    optimizer = SGDL1L2(straight.parameters(), **options)
    data = batches(6)
    for batch in data[:3]:
        train_step(straight, optimizer, batch)
    saved = io.BytesIO()
    torch.save(optimizer.state_dict(), saved)
    resumed = copy.deepcopy(straight)
    for batch in data[3:]:
        train_step(straight, optimizer, batch)

    fresh = SGDL1L2(resumed.parameters(), lr=1.0)  # options come back from the state dict
    saved.seek(0)
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    assert fresh.param_groups[0]["weight_decay_l1"] == 1e-2
    assert all("momentum_buffer" in fresh.state[p] for p in resumed.parameters())
    for batch in data[3:]:
        train_step(resumed, fresh, batch)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_each_group_uses_its_own_l1_and_l2():
    model = small_model()
    first, second = model[0], model[2]
    optimizer = SGDL1L2(
        [
            {"params": first.parameters(), "weight_decay_l1": 1e-1},
            {"params": second.parameters(), "weight_decay_l2": 5e-2, "lr": 0.05},
        ],
        lr=0.1,
        momentum=0.5,
        weight_decay_l2=1e-3,
    )
    groups = [
        {"lr": 0.1, "momentum": 0.5, "weight_decay_l1": 1e-1, "weight_decay_l2": 1e-3},
        {"lr": 0.05, "momentum": 0.5, "weight_decay_l1": 0.0, "weight_decay_l2": 5e-2},
    ]
    for actual, expected in zip(optimizer.param_groups, groups, strict=True):
        assert {key: actual[key] for key in expected} == expected
    layers = [list(first.parameters()), list(second.parameters())]
    weights = [[p.detach().double().clone() for p in params] for params in layers]
    buffers = [[None] * len(params) for params in layers]
    for batch in batches(4):
        train_step(model, optimizer, batch)
        for params, w, b, group in zip(layers, weights, buffers, groups, strict=True):
            reference_step(w, [p.grad for p in params], b, group)
    for params, w in zip(layers, weights, strict=True):
        for p, expected in zip(params, w, strict=True):
            torch.testing.assert_close(p.double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": -0.1}, r"Invalid lr value: -0\.1"),
        ({"momentum": -0.5}, r"Invalid momentum value: -0\.5"),
        ({"weight_decay_l1": -1e-4}, r"Invalid weight_decay_l1 value: -0\.0001"),
        ({"weight_decay_l2": -2.0}, r"Invalid weight_decay_l2 value: -2\.0"),
        ({"nesterov": True}, r"Nesterov .* momentum=0\.0, dampening=0\.0"),
        ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, r"dampening=0\.1"),
    ],
)
def test_bad_arguments_are_value_errors(options, message):
    with pytest.raises(ValueError, match=message):
        SGDL1L2(small_model().parameters(), **{"lr": 0.1, **options})


def test_a_bad_group_option_is_a_value_error():
    model = small_model()
    with pytest.raises(ValueError, match=r"Invalid weight_decay_l1 value: -1"):
        SGDL1L2([{"params": model.parameters(), "weight_decay_l1": -1}], lr=0.1)


def test_from_the_cli_by_class_path(tmp_path):
    """The lenet config with SGDL1L2 swapped in; its ``weight_decay`` is not carried over."""
    data_dir = write_image_folder(tmp_path / "data", n_per_class=4)
    groups = (
        '[{"name": "features", "modules": ["features"], "weight_decay_l1": 1e-4},'
        ' {"name": "classifier", "modules": ["classifier"], "lr_scale": 10.0}]'
    )
    cli = run(
        [
            "fit", "--config", LENET,
            "--data.data_dir", str(data_dir), "--data.val_size", "10", "--data.batch_size", "10",
            "--trainer.default_root_dir", str(tmp_path), "--trainer.accelerator", "cpu",
            "--trainer.fast_dev_run", "1", "--trainer.enable_progress_bar", "false",
            "--model.optimizer", "groupwise.optim.SGDL1L2",
            "--model.optimizer.init_args.lr", "0.01",
            "--model.optimizer.init_args.weight_decay_l1", "1e-5",
            "--model.param_groups", groups,
        ]
    )  # fmt: skip
    optimizer = cli.trainer.optimizers[0]
    assert isinstance(optimizer, SGDL1L2)
    features, classifier = optimizer.param_groups
    assert (features["name"], features["lr"], features["weight_decay_l1"]) == (
        "features",
        0.01,
        1e-4,
    )
    assert (classifier["name"], classifier["lr"], classifier["weight_decay_l1"]) == (
        "classifier",
        0.1,
        1e-5,
    )
    assert features["momentum"] == classifier["momentum"] == 0.9  # kept from the config
    assert features["weight_decay_l2"] == 0.0
    assert cli.trainer.global_step == 1

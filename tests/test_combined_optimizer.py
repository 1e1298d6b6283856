"""CombinedOptimizer: an optimizer per group behind the one optimizer object that torch's
schedulers, GradScaler and Lightning see."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conv_head_net import Net
from torch import nn

from groupwise.optim import CombinedOptimizer, Muon, ParamGroupError, build_optimizer
from groupwise.optim import muon as muon_module
from groupwise.optim.param_groups import describe_optimizer

# YAML order interleaves the optimizers: SGD, Muon, AdamW, then the default group (SGD).
RULES = [
    {"name": "norm", "modules": ["norm"], "lr_scale": 4.0},
    {
        "name": "filters",
        "params": ["conv.weight"],
        "optimizer": {"class_path": "groupwise.optim.Muon", "init_args": {"lr": 0.2}},
        "momentum": 0.6,
    },
    {"name": "head_w", "params": ["head.weight"], "optimizer": "torch.optim.AdamW"},
]
SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=5e-4)


def build(net: nn.Module | None = None) -> tuple[nn.Module, CombinedOptimizer]:
    net = net or Net()
    return net, build_optimizer(net, RULES, SGD)


def train_step(net: nn.Module, optimizer: torch.optim.Optimizer, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    optimizer.step()
    return loss


def test_param_groups_are_the_children_s_dicts_in_yaml_order():
    net, optimizer = build()
    assert [g["name"] for g in optimizer.param_groups] == ["norm", "filters", "head_w", "default"]
    children = optimizer.group_optimizers
    assert [type(c) for c in children] == [
        torch.optim.SGD,
        Muon,
        torch.optim.AdamW,
        torch.optim.SGD,
    ]
    for group, child in zip(optimizer.param_groups, children, strict=True):
        assert any(group is own for own in child.param_groups)  # the same dict object
    # Each group's options come from its own optimizer: lr_scale of SGD's lr, Muon's lr
    # with the rule's momentum, AdamW's own defaults.
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == [pytest.approx(0.4), 0.2, 1e-3, 0.1]
    assert optimizer.param_groups[1]["momentum"] == 0.6
    assert optimizer.param_groups[2]["betas"] == (0.9, 0.999)
    assert [p for g in optimizer.param_groups for p in g["params"]] == [
        net.norm.weight, net.norm.bias, net.conv.weight, net.head.weight, net.head.bias
    ]  # fmt: skip


def test_an_option_the_group_s_optimizer_does_not_take_names_that_optimizer():
    rules = [{**RULES[1], "betas": (0.9, 0.99)}]
    with pytest.raises(ParamGroupError, match=r"'filters' sets 'betas', which Muon does"):
        build_optimizer(Net(), rules, SGD)
    # ... while the same option is fine for an AdamW group, and nesterov for neither.
    build_optimizer(Net(), [{**RULES[2], "betas": (0.9, 0.99)}], SGD)
    with pytest.raises(ParamGroupError, match=r"'head_w' sets 'nesterov', which AdamW"):
        build_optimizer(Net(), [{**RULES[2], "nesterov": True}], SGD)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("torch.optim.AdamWW", r"'torch.optim.AdamWW' is no torch optimizer class; did you mean"),
        ({"class_path": "torch.optim.AdamW", "init_args": {"momentum": 0.9}}, "does not take"),
        ({"class_path": "groupwise.optim.Muon", "init_args": {"lr": -1}}, "lr must be >= 0"),
        ({"class_path": "torch.optim.SGD", "init": {}}, r"unknown keys \['init'\]"),
    ],
)
def test_a_bad_group_optimizer_is_a_clear_error_naming_the_group(spec, message):
    with pytest.raises(ParamGroupError, match=f"parameter group 'g'.*{message}"):
        build_optimizer(Net(), [{"name": "g", "params": ["conv.weight"], "optimizer": spec}], SGD)


def test_without_a_group_optimizer_the_model_s_optimizer_is_returned_as_before():
    optimizer = build_optimizer(Net(), [RULES[0]], SGD)
    assert type(optimizer) is torch.optim.SGD


def test_step_evaluates_the_closure_once_and_steps_every_group():
    net, optimizer = build()
    before = [p.detach().clone() for p in net.parameters()]
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        optimizer.zero_grad()
        loss = net(torch.randn(4, 3, 6, 6)).square().mean()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert len(calls) == 1 and torch.is_tensor(loss)
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
    optimizer.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_the_same_steps_as_separate_optimizers():
    """Each child steps exactly as the same optimizer alone would on its groups."""
    net, optimizer = build()
    twin = copy.deepcopy(net)
    alone = [
        torch.optim.SGD(
            [twin.norm.weight, twin.norm.bias], lr=0.4, momentum=0.9, weight_decay=5e-4
        ),
        Muon([twin.conv.weight], lr=0.2, momentum=0.6),
        torch.optim.AdamW([twin.head.weight]),
        torch.optim.SGD([twin.head.bias], lr=0.1, momentum=0.9, weight_decay=5e-4),
    ]
    for seed in range(3):
        train_step(net, optimizer, seed)
        torch.manual_seed(seed)
        x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 2, (8,))
        for o in alone:
            o.zero_grad()
        nn.functional.cross_entropy(twin(x), y).backward()
        for o in alone:
            o.step()
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_state_dict_round_trip_restores_every_child_exactly():
    net, optimizer = build()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[1], gamma=0.5)
    for seed in range(2):
        train_step(net, optimizer, seed)
        scheduler.step()
    saved = copy.deepcopy(optimizer.state_dict())
    # torch's format over all groups, in the combined order, with each group's class
    assert saved["optimizers"] == [
        "torch.optim.sgd.SGD", "groupwise.optim.muon.Muon", "torch.optim.adamw.AdamW",
        "torch.optim.sgd.SGD",
    ]  # fmt: skip
    assert [g["params"] for g in saved["param_groups"]] == [[0, 1], [2], [3], [4]]
    assert [g["lr"] for g in saved["param_groups"]] == [pytest.approx(0.2), 0.1, 5e-4, 0.05]
    assert sorted(saved["state"]) == [0, 1, 2, 3, 4]
    assert set(saved["state"][3]) == {"step", "exp_avg", "exp_avg_sq"}

    twin, restored = build(copy.deepcopy(net))
    torch.optim.lr_scheduler.MultiStepLR(restored, milestones=[1], gamma=0.5)
    restored.load_state_dict(saved)
    for child, twin_child in zip(optimizer.optimizers, restored.optimizers, strict=True):
        a, b = child.state_dict(), twin_child.state_dict()
        assert a["param_groups"] == b["param_groups"]
        assert a["state"].keys() == b["state"].keys()
        for index, state in a["state"].items():
            for key, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key]))
    # the combined groups are the children's new dicts after the load
    assert all(
        any(g is own for own in child.param_groups)
        for g, child in zip(restored.param_groups, restored.group_optimizers, strict=True)
    )
    # and training goes on identically
    train_step(net, optimizer, 7)
    train_step(twin, restored, 7)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_group_s_optimizer_class_changed_since_the_save_names_both_classes():
    net, optimizer = build()
    train_step(net, optimizer, 0)
    saved = optimizer.state_dict()
    rules = [RULES[0], {**RULES[1], "optimizer": "torch.optim.SGD", "momentum": 0.9}, RULES[2]]
    other = build_optimizer(Net(), rules, SGD)
    with pytest.raises(
        ValueError,
        match=r"group 'filters': groupwise.optim.muon.Muon when saved, torch.optim.sgd.SGD now",
    ):
        other.load_state_dict(saved)
    plain = torch.optim.SGD(Net().parameters(), lr=0.1).state_dict()
    with pytest.raises(ValueError, match="state is of a single optimizer"):
        build()[1].load_state_dict({**plain, "param_groups": plain["param_groups"] * 4})


def test_add_param_group_makes_a_child_of_the_default_optimizer():
    net, optimizer = build()
    extra = nn.Parameter(torch.ones(3))
    optimizer.add_param_group({"params": [extra], "name": "late", "lr": 0.01})
    assert optimizer.param_groups[-1]["name"] == "late"
    assert type(optimizer.group_optimizers[-1]) is torch.optim.SGD
    assert optimizer.param_groups[-1]["momentum"] == 0.9  # the default optimizer's
    with pytest.raises(ValueError, match="more than one parameter group"):
        optimizer.add_param_group({"params": [extra]})


def test_schedulers_step_every_group_s_own_lr():
    net, optimizer = build()
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[1.0, 2.0, 3.0, 4.0], total_steps=10
    )
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.04, 0.08, 0.12, 0.16])
    train_step(net, optimizer, 0)
    scheduler.step()
    for child, max_lr in zip(optimizer.group_optimizers, [1.0, 2.0, 3.0, 4.0], strict=True):
        assert child.param_groups[0]["lr"] == pytest.approx(
            scheduler.get_last_lr()[0] / 1.0 * max_lr
        )


def test_grad_scaler_unscales_every_group_and_skips_a_step_with_inf_gradients():
    net, optimizer = build()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(4, 3, 6, 6)
    loss = net(x).square().mean()
    scaler.scale(loss).backward()
    net.conv.weight.grad[0, 0, 0, 0] = float("inf")
    before = [p.detach().clone() for p in net.parameters()]
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
    assert scaler.get_scale() == 512.0
    optimizer.zero_grad()
    scaler.scale(net(x).square().mean()).backward()
    grads = [p.grad.clone() / 512.0 for p in net.parameters()]
    scaler.unscale_(optimizer)
    for p, g in zip(net.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)
    scaler.step(optimizer)
    assert all(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


def test_lbfgs_and_shared_parameters_are_refused():
    a = nn.Parameter(torch.ones(2, 2))
    with pytest.raises(TypeError, match="LBFGS evaluates the loss several times"):
        CombinedOptimizer(
            [torch.optim.SGD([a], lr=0.1), torch.optim.LBFGS([nn.Parameter(torch.ones(1))])]
        )
    with pytest.raises(ValueError, match=r"in optimizers #0 \(SGD\) and #1 \(Muon\)"):
        CombinedOptimizer([torch.optim.SGD([a], lr=0.1), Muon([a])])


def test_the_group_table_names_each_group_s_optimizer(monkeypatch):
    monkeypatch.setattr(muon_module, "cpu_has_fast_bfloat16", lambda: False)
    _, optimizer = build()
    rows = describe_optimizer(optimizer)
    assert [(r["name"], r["optimizer"], r["momentum"]) for r in rows] == [
        ("norm", "SGD", 0.9),
        ("filters", "Muon (ns float32)", 0.6),  # and its Newton-Schulz dtype
        ("head_w", "AdamW", "-"),
        ("default", "SGD", 0.9),
    ]
    assert rows[2]["betas"] == (0.9, 0.999) and rows[0]["betas"] == "-"


def test_lr_scale_scales_the_group_s_own_optimizer_s_lr():
    rule = {**RULES[1], "lr_scale": 0.5}
    optimizer = build_optimizer(Net(), [rule], SGD)
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [
        ("filters", 0.1),  # half of Muon's 0.2, not of SGD's 0.1
        ("default", 0.1),
    ]


def test_state_reads_and_writes_reach_the_children_as_torch_s_defaultdict_does():
    """Torch-style code (a Lookahead's slow weights, a custom buffer) reads
    ``optimizer.state[p]`` of a parameter without state and writes into it: torch's
    ``state`` is a ``defaultdict(dict)``, so the read gives ``{}`` and the writes stay."""
    net, optimizer = build()
    assert optimizer.state[net.head.bias] == {}  # no state yet: an empty dict, no KeyError
    optimizer.state[net.head.bias]["slow"] = torch.full((2,), 3.0)
    assert torch.equal(optimizer.state[net.head.bias]["slow"], torch.full((2,), 3.0))
    # the write is the child's, so it is saved and restored with the child's state
    owner = optimizer.group_optimizers[-1]
    assert torch.equal(owner.state[net.head.bias]["slow"], torch.full((2,), 3.0))
    saved = optimizer.state_dict()
    assert torch.equal(saved["state"][4]["slow"], torch.full((2,), 3.0))
    # assigning a whole entry (as Lightning's _optimizer_to_device does) reaches it too
    optimizer.state[net.conv.weight] = {"momentum_buffer": torch.ones(4, 3, 3, 3)}
    assert torch.equal(
        optimizer.group_optimizers[1].state[net.conv.weight]["momentum_buffer"],
        torch.ones(4, 3, 3, 3),
    )
    assert set(optimizer.state) == {net.head.bias, net.conv.weight}
    assert len(optimizer.state) == 2
    del optimizer.state[net.conv.weight]
    assert net.conv.weight not in optimizer.group_optimizers[1].state
    assert list(optimizer.state.items()) == [(net.head.bias, owner.state[net.head.bias])]


def test_a_deep_copy_of_model_and_optimizer_trains_on_identically():
    """As a torch optimizer's does (torch's ``__getstate__`` keeps only ``defaults``,
    ``state`` and ``param_groups``: the children were lost)."""
    net, optimizer = build()
    train_step(net, optimizer, 0)
    twin, copied = copy.deepcopy((net, optimizer))
    assert [type(c) for c in copied.group_optimizers] == [
        type(c) for c in optimizer.group_optimizers
    ]
    steps = {id(p) for g in copied.param_groups for p in g["params"]}
    assert steps == {id(p) for p in twin.parameters()}  # the copy's own parameters
    for seed in (1, 2):
        train_step(net, optimizer, seed)
        train_step(twin, copied, seed)
    for a, b in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)

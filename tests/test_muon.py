"""groupwise.optim.Muon: one step against a hand-computed Newton-Schulz reference for a
2-D weight and a 4-D conv filter (in bfloat16 and float32), torch.optim.Muon's update on
2-D weights, and the refusal of 1-D parameters. ``ns_dtype``'s choice:
tests/test_muon_ns_dtype.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from groupwise.optim import Muon, ParamGroupError, build_optimizer
from groupwise.optim.muon import DEFAULT_NS_COEFFICIENTS, NS_PRESETS

A, B, C = 3.4445, -4.7750, 2.0315  # Keller Jordan's coefficients (torch.optim.Muon's)


def newton_schulz(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """The zeroth power of ``matrix`` as Muon defines it, in float64: on the wide
    orientation, from ``matrix / ||matrix||``, ``steps`` quintic iterations."""
    x = matrix.double()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = A * x + (B * gram + C * gram @ gram) @ x
    return x.T if tall else x


def one_step(param: torch.Tensor, grad: torch.Tensor, **options) -> torch.Tensor:
    """The change of ``param`` in one Muon step with gradient ``grad``."""
    weight = nn.Parameter(param.clone())
    optimizer = Muon([weight], **options)
    weight.grad = grad.clone()
    optimizer.step()
    return weight.detach() - param


@pytest.mark.parametrize(
    "shape",
    # a wide and a tall weight matrix; a conv filter, flattened to (8, 27)
    [(16, 40), (40, 16), (8, 3, 3, 3)],
    ids=["2d", "2d-tall", "4d"],
)
# bfloat16 has 8 bits of mantissa; float32's iteration is float64's to rounding
@pytest.mark.parametrize(("ns_dtype", "atol"), [("bfloat16", 0.02), ("float32", 1e-5)])
def test_one_step_is_the_newton_schulz_of_the_flattened_gradient(shape, ns_dtype, atol):
    torch.manual_seed(0)
    param, grad = torch.randn(shape), torch.randn(shape)
    lr, momentum, wd = 0.05, 0.9, 0.1
    options = {"nesterov": True, "weight_decay": wd, "ns_steps": 5, "ns_dtype": ns_dtype}
    change = one_step(param, grad, lr=lr, momentum=momentum, **options)
    # First step: buf = (1 - m) g; Nesterov u = (1 - m) g + m buf = (1 - m)(1 + m) g, and
    # Newton-Schulz divides by the norm, so the direction is NS(g) of the flattened g.
    u = (1 - momentum) * grad + momentum * (1 - momentum) * grad
    matrix = u.reshape(shape[0], -1)
    scale = math.sqrt(max(1, matrix.shape[0] / matrix.shape[1]))  # adjust_lr_fn "original"
    expected = newton_schulz(matrix, 5).reshape(shape)
    direction = (-(change + lr * wd * param) / (lr * scale)).double()
    torch.testing.assert_close(direction, expected, rtol=0, atol=atol)
    assert (direction - expected).norm() / expected.norm() < atol
    # The flattened update is semi-orthogonal as an (out, in*kh*kw) matrix: its singular
    # values lie near 1 (the quintic iteration leaves them in about [0.7, 1.2]).
    singular = torch.linalg.svdvals(direction.reshape(matrix.shape))
    assert len(singular) == min(matrix.shape) and 0.6 < singular.min() < singular.max() < 1.3


def test_two_d_update_is_exactly_torch_optim_muon_s():
    torch.manual_seed(1)
    ours, theirs = nn.Parameter(torch.randn(12, 30)), nn.Parameter(torch.zeros(12, 30))
    theirs.data.copy_(ours.data)
    options = {"lr": 0.02, "momentum": 0.95, "nesterov": True, "weight_decay": 0.1}
    # torch.optim.Muon iterates in bfloat16 on every device
    a, b = Muon([ours], ns_dtype="bfloat16", **options), torch.optim.Muon([theirs], **options)
    for _ in range(3):
        grad = torch.randn(12, 30)
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        a.step()
        b.step()
    assert torch.equal(ours, theirs)
    assert torch.equal(a.state[ours]["momentum_buffer"], b.state[theirs]["momentum_buffer"])


def test_a_channels_last_filter_gets_the_same_update():
    torch.manual_seed(2)
    param, grad = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)
    cl = nn.Parameter(param.clone().contiguous(memory_format=torch.channels_last))
    optimizer = Muon([cl], lr=0.1)
    cl.grad = grad.clone().contiguous(memory_format=torch.channels_last)
    optimizer.step()
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl.detach() - param, one_step(param, grad, lr=0.1), rtol=0, atol=0)


def test_normalize_weights_rescales_each_filter_before_the_step():
    torch.manual_seed(3)
    param, grad = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)
    change = one_step(param, grad, lr=0.1, weight_decay=0.0, normalize_weights=True)
    normalized = param * math.sqrt(8) / param.norm()
    expected = normalized - param + one_step(normalized, grad, lr=0.1, weight_decay=0.0)
    torch.testing.assert_close(change, expected, rtol=0, atol=1e-6)


def test_a_parameter_without_gradient_is_skipped_and_gets_no_momentum():
    used, unused = nn.Parameter(torch.randn(4, 6)), nn.Parameter(torch.randn(4, 6))
    optimizer = Muon([used, unused], lr=0.1)
    before = unused.detach().clone()
    used.grad = torch.randn(4, 6)
    optimizer.step()
    assert torch.equal(unused, before) and unused not in optimizer.state
    assert "momentum_buffer" in optimizer.state[used]


def test_one_dimensional_parameters_are_refused_naming_the_parameter_and_its_shape():
    with pytest.raises(ValueError, match=r"parameter #1 of group 'w' has shape \(5,\)"):
        Muon(
            [{"name": "w", "params": [nn.Parameter(torch.ones(5, 5)), nn.Parameter(torch.ones(5))]}]
        )
    with pytest.raises(ValueError, match=r"'head.bias' has shape \(3,\)"):
        Muon([("head.bias", nn.Parameter(torch.ones(3)))])  # torch's named parameters
    optimizer = Muon([nn.Parameter(torch.ones(2, 2))])
    with pytest.raises(ValueError, match=r"shape \(\)"):
        optimizer.add_param_group({"params": [nn.Parameter(torch.tensor(1.0))]})
    assert len(optimizer.param_groups) == 1  # nothing half-added


def test_a_muon_rule_matching_a_bias_names_it_through_the_model():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    rules = [{"name": "convs", "modules": ["0"], "optimizer": "groupwise.optim.Muon"}]
    with pytest.raises(ParamGroupError, match=r"'convs' uses Muon.*0\.bias has shape \(4,\)"):
        build_optimizer(net, rules, torch.optim.SGD)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": -1.0}, "lr must be >= 0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"ns_steps": 0}, "ns_steps must be >= 1"),
        ({"adjust_lr_fn": "sqrt"}, "adjust_lr_fn must be one of"),
        ({"ns_dtype": "float16"}, r"ns_dtype must be one of \('auto', 'bfloat16', 'float32'\)"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        Muon([nn.Parameter(torch.ones(2, 2))], **options)


def test_the_no_decay_half_of_a_muon_rule_is_refused_with_a_hint():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    rules = [{"name": "convs", "modules": ["0"], "optimizer": "groupwise.optim.Muon"}]
    with pytest.raises(
        ParamGroupError, match=r"'convs.no_decay' uses Muon.*0\.bias.*no_decay_split"
    ):
        build_optimizer(net, rules, torch.optim.SGD, no_decay_split=True)


def test_timm_s_private_preset_table_still_names_the_coefficients():
    """``ns_coefficients`` preset names resolve through timm's private ``_COEFFICIENTS``
    (``groupwise.optim.muon.NS_PRESETS``): this fails if a timm release renames it."""
    assert {"original", "quintic", "polar_express"} <= set(NS_PRESETS)
    assert NS_PRESETS["original"] == [DEFAULT_NS_COEFFICIENTS]
    torch.manual_seed(5)
    param, grad = torch.randn(6, 10), torch.randn(6, 10)
    by_name = one_step(param, grad, ns_coefficients="original", ns_dtype="float32")
    assert torch.equal(by_name, one_step(param, grad, ns_dtype="float32"))

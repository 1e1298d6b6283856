"""groupwise.nets.AirbenchNet: airbench94's net as a plain nn.Module. Its size, what is
frozen, the dirac and head inits, the batch-norm settings, the whitening filters as a
property (they whiten the patches they were computed from), and the recipe's four group
rules: every trainable parameter in exactly one group, the frozen ones in none."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groupwise.errors import ConfigError
from groupwise.nets import AirbenchNet, whitening_filters
from groupwise.optim.param_groups import build_param_groups

# configs/airbench94.yaml's rules (their options do not matter here)
RULES = [
    {"name": "whiten_bias", "params": ["whiten.bias"]},
    {"name": "norm_biases", "params": ["*.norm*.bias"]},
    {"name": "head", "params": ["head.weight"]},
    {"name": "filters", "params": ["layers.*.conv*.weight"]},
]
SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}


def test_size_and_output_of_the_published_widths():
    net = AirbenchNet()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    counts = {name: p.numel() for name, p in net.named_parameters()}
    # whiten 24x3x2x2 + 24; conv 24->64, 64->64, 64->256, 256->256 (x3), 3x3; head 256x10
    convs = 9 * (24 * 64 + 64 * 64 + 64 * 256 + 3 * 256 * 256)
    norms = 2 * 2 * (64 + 256 + 256)
    assert sum(counts.values()) == 288 + 24 + convs + norms + 2560 == 1_972_792
    frozen = [name for name, p in net.named_parameters() if not p.requires_grad]
    assert frozen == ["whiten.weight"] + [
        f"layers.{g}.norm{i}.weight" for g in (1, 2, 3) for i in (1, 2)
    ]


def test_convs_start_as_the_identity_on_their_first_channels_and_the_head_at_std_1():
    torch.manual_seed(0)
    net = AirbenchNet(widths=(8, 16, 16))
    for name, param in net.named_parameters():
        if ".conv" in name:
            out_channels, in_channels = param.shape[:2]
            k = min(out_channels, in_channels)  # dirac_ on airbench's weight[:in_channels]
            dirac = torch.zeros(k, in_channels, 3, 3)
            dirac[range(k), range(k), 1, 1] = 1
            assert torch.equal(param[:k], dirac), name
            if out_channels > in_channels:  # the rest: torch's default init
                assert param[k:].abs().min() > 0
    assert net.head.weight.std().item() == pytest.approx(1.0, abs=1e-6)
    assert net.head.bias is None


def test_batch_norm_is_airbenchs():
    norms = [m for m in AirbenchNet().modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6
    for norm in norms:
        # airbench's momentum 0.6 keeps 0.6 of the old statistics: torch's momentum 0.4
        assert norm.momentum == pytest.approx(0.4) and norm.eps == 1e-12
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert not norm.weight.requires_grad and norm.bias.requires_grad


def test_logits_are_the_heads_output_divided_by_its_width():
    torch.manual_seed(0)
    net = AirbenchNet(widths=(8, 16, 12)).eval()
    x = torch.randn(3, 3, 32, 32)
    features = net.layers(net.whiten(x)).flatten(1)
    assert features.shape == (3, 12)
    torch.testing.assert_close(net(x), net.head(features) / 12, rtol=0, atol=0)


def test_bad_widths_are_one_clear_error():
    with pytest.raises(ConfigError, match=r"widths must be three positive channel counts"):
        AirbenchNet(widths=(64, 256))


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(8, 24),
    scale=st.floats(0.5, 4.0),
    eps=st.sampled_from([5e-4, 1e-2]),
)
def test_whitening_filters_whiten_the_patches_they_come_from(seed, n, scale, eps):
    """The first half of the filters maps the images' 2x2 patches to outputs whose
    (uncentred) covariance is diagonal, eigenvalue / (eigenvalue + eps); the second half is
    the first's negative. In float64, so the check is exact to rounding."""
    generator = torch.Generator().manual_seed(seed)
    images = scale * torch.randn(n, 3, 8, 8, generator=generator, dtype=torch.float64)
    images[:, 1] += 0.8 * images[:, 0]  # correlated channels, as in real images
    filters = whitening_filters(images, (2, 2), eps)
    assert filters.shape == (24, 3, 2, 2)
    torch.testing.assert_close(filters[12:], -filters[:12], rtol=0, atol=0)
    out = torch.nn.functional.conv2d(images, filters[:12])  # (n, 12, 7, 7)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / len(patches))
    expected = torch.diag(eigenvalues / (eigenvalues + eps))
    torch.testing.assert_close(covariance, expected, rtol=1e-9, atol=1e-9)


def test_init_whiten_sets_the_frozen_filters_in_place():
    torch.manual_seed(0)
    net = AirbenchNet(widths=(8, 16, 16))
    weight = net.whiten.weight
    images = torch.randn(20, 3, 32, 32)
    net.init_whiten(images)
    assert net.whiten.weight is weight and not weight.requires_grad
    torch.testing.assert_close(weight, whitening_filters(images, (2, 2), 5e-4), rtol=0, atol=0)


def test_the_recipes_rules_put_each_trainable_parameter_in_one_group_and_no_frozen_one():
    """build_param_groups' partition check (every trainable parameter in exactly one group)
    accepts the frozen whitening filters and batch-norm weights: they are in no group."""
    net = AirbenchNet()
    groups = build_param_groups(net, RULES, SGD)
    names = {id(p): n for n, p in net.named_parameters()}
    members = {g["name"]: [names[id(p)] for p in g["params"]] for g in groups}
    assert members == {
        "whiten_bias": ["whiten.bias"],
        "norm_biases": [f"layers.{g}.norm{i}.bias" for g in (1, 2, 3) for i in (1, 2)],
        "head": ["head.weight"],
        "filters": [f"layers.{g}.conv{i}.weight" for g in (1, 2, 3) for i in (1, 2)],
    }
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in net.parameters() if p.requires_grad}

"""FastNet: logits of the right shape, batch-norm parameters named ``*.norm.*``, and the
parameter groups of configs/fast.yaml splitting it into norm parameters and weights."""

import fnmatch
import re

import pytest
import torch
import yaml
from cli_run import ROOT
from torch import nn

from groupwise.nets import FastNet
from groupwise.optim.param_groups import build_param_groups

FAST = ROOT / "configs" / "fast.yaml"
THREE_WIDTHS = "widths must be three positive channel counts"


def fast_yaml() -> dict:
    with open(FAST) as file:
        return yaml.safe_load(file)


@pytest.mark.parametrize(
    "kwargs, channels",
    [({}, 128), ({"num_classes": 7, "widths": (8, 16, 12), "stem_width": 4}, 12)],
    ids=["defaults", "narrow"],
)
def test_logits_are_batch_by_classes_and_the_stages_halve_the_resolution(kwargs, channels):
    torch.manual_seed(0)
    net = FastNet(**kwargs)
    images = torch.randn(3, 3, 32, 32)
    classes = kwargs.get("num_classes", 10)
    # the 2x2 stem (no padding) gives 31x31; three 2x2 max-pools: 15, 7, 3
    assert net.backbone(images).shape == (3, channels, 3, 3)
    assert net(images).shape == (3, classes)
    net.eval()
    with torch.no_grad():
        assert net(images[:1]).shape == (1, classes)
        # eval mode: batch norm uses running statistics, so an image's logits do not depend
        # on the rest of the batch
        torch.testing.assert_close(net(images[:1]), net(images)[:1])


def test_residual_stage_adds_its_second_conv_to_the_pooled_first():
    torch.manual_seed(0)
    stage = FastNet(widths=(4, 4, 4), stem_width=3).backbone[1].eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        pooled = nn.functional.max_pool2d(stage.conv1(x), 2)
        torch.testing.assert_close(stage(x), pooled + stage.conv2(pooled))


def test_every_batch_norm_parameter_and_only_those_match_the_norm_pattern():
    net = FastNet()
    norm_modules = [name for name, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norm_modules) == 7  # the stem and two per stage
    norm_params = {f"{m}.{p}" for m in norm_modules for p in ("weight", "bias")}
    matching = {name for name, _ in net.named_parameters() if fnmatch.fnmatchcase(name, "*.norm.*")}
    assert matching == norm_params
    assert all(name.endswith(".norm") for name in norm_modules)


def test_fast_yaml_groups_are_exactly_the_norm_parameters_and_the_weights():
    config = fast_yaml()["model"]
    net = FastNet(**config["net"]["init_args"])
    defaults = torch.optim.SGD([torch.zeros(1)], **config["optimizer"]["init_args"]).defaults
    groups = build_param_groups(net, config["param_groups"], defaults)
    assert [group["name"] for group in groups] == ["norm", "weights"]  # no "default" group
    by_name = {group["name"]: {id(p) for p in group["params"]} for group in groups}

    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert all(m.bias is None for m in layers)  # bias-free: the norms' shifts replace them
    assert by_name["norm"] == {id(p) for m in norms for p in (m.weight, m.bias)}
    assert by_name["weights"] == {id(m.weight) for m in layers}
    assert len(by_name["norm"]) == 14 and len(by_name["weights"]) == 8  # 7 convs + 1 linear

    # each group's options as the YAML states them
    norm_rule = config["param_groups"][0]
    norm, weights = groups
    assert norm["lr"] == config["optimizer"]["init_args"]["lr"] * norm_rule["lr_scale"]
    assert norm["weight_decay"] == norm_rule["weight_decay"]
    assert set(weights) == {"name", "params"}  # the optimizer's defaults


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"widths": (32, 64)}, f"{THREE_WIDTHS}, got (32, 64)"),
        ({"widths": (32, 64, 128, 256)}, f"{THREE_WIDTHS}, got (32, 64, 128, 256)"),
        ({"widths": (32, 0, 128)}, f"{THREE_WIDTHS}, got (32, 0, 128)"),
        ({"widths": [-8, 16, 16]}, f"{THREE_WIDTHS}, got [-8, 16, 16]"),
        ({"stem_width": 0}, "stem_width must be a positive channel count, got 0"),
        ({"num_classes": 0}, "num_classes must be a positive number, got 0"),
    ],
)
def test_bad_sizes_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FastNet(**kwargs)

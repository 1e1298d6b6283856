"""build_param_groups: exact membership, options and errors."""

import pytest
import torch
from torch import nn

from groupwise.nets import CifarResNet18, LeNet5
from groupwise.optim.param_groups import ParamGroupError, build_param_groups, describe, format_table

SGD_DEFAULTS = torch.optim.SGD([torch.zeros(1)], lr=0.1, momentum=0.9, weight_decay=5e-4).defaults


def names_by_group(model: nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    """Map each group name to the names of the parameters in it (by identity)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {name_of[id(p)] for p in g["params"]} for g in groups}


LENET_FEATURES = {"features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"}
LENET_CLASSIFIER = {f"classifier.{i}.{k}" for i in (1, 3, 5) for k in ("weight", "bias")}


def test_lenet_features_and_classifier_with_lr_scale():
    model = LeNet5()
    rules = [
        {"name": "features", "modules": ["features"], "lr": 0.01},
        {"name": "classifier", "modules": ["classifier"], "lr_scale": 10.0},
    ]
    groups = build_param_groups(model, rules, SGD_DEFAULTS)
    assert names_by_group(model, groups) == {
        "features": LENET_FEATURES,
        "classifier": LENET_CLASSIFIER,
    }
    assert [(g["name"], g.get("lr")) for g in groups] == [("features", 0.01), ("classifier", 1.0)]
    # lr_scale is resolved into lr: no key reaches the optimizer that nobody reads.
    assert all("lr_scale" not in g for g in groups)


def test_first_matching_rule_wins_and_rest_goes_to_default():
    model = LeNet5()
    rules = [
        {"name": "last", "params": ["classifier.5.*"], "weight_decay": 0.0},
        {"name": "classifier", "modules": ["classifier"]},
    ]
    groups = build_param_groups(model, rules, SGD_DEFAULTS)
    assert names_by_group(model, groups) == {
        "last": {"classifier.5.weight", "classifier.5.bias"},
        "classifier": LENET_CLASSIFIER - {"classifier.5.weight", "classifier.5.bias"},
        "default": LENET_FEATURES,
    }
    assert groups[0]["weight_decay"] == 0.0
    # The default group carries no options: the optimizer's defaults apply.
    assert set(groups[2]) == {"name", "params"}


def test_no_rules_gives_one_default_group_for_closure_optimizers():
    model = LeNet5()
    groups = build_param_groups(model, None, SGD_DEFAULTS)
    assert len(groups) == 1 and groups[0]["name"] == "default"
    assert len(groups[0]["params"]) == 10
    torch.optim.LBFGS(groups)  # LBFGS accepts exactly one group


def test_no_decay_split_on_resnet18():
    model = CifarResNet18()
    rules = [
        {"name": "backbone", "modules": ["backbone"]},
        {"name": "head", "modules": ["head"], "lr_scale": 2.0},
    ]
    groups = build_param_groups(model, rules, SGD_DEFAULTS, no_decay_split=True)
    by_name = names_by_group(model, groups)
    assert list(by_name) == ["backbone", "backbone.no_decay", "head", "head.no_decay"]
    all_names = {n for n, _ in model.named_parameters()}
    convs = {n for n, p in model.named_parameters() if p.ndim == 4}
    assert by_name["backbone"] == convs
    assert by_name["backbone.no_decay"] == {
        n for n in all_names if n.startswith("backbone.") and n not in convs
    }
    # BatchNorm weight and bias of the stem, and of a downsampling shortcut:
    assert {"backbone.0.1.weight", "backbone.0.1.bias"} <= by_name["backbone.no_decay"]
    assert "backbone.2.0.shortcut.1.weight" in by_name["backbone.no_decay"]
    assert by_name["head"] == {"head.2.weight"}
    assert by_name["head.no_decay"] == {"head.2.bias"}
    assert [g.get("weight_decay") for g in groups] == [None, 0.0, None, 0.0]
    assert [g.get("lr") for g in groups] == [None, None, 0.2, 0.2]
    assert len(by_name["backbone"]) == 20 and len(by_name["backbone.no_decay"]) == 40


def test_every_trainable_parameter_in_exactly_one_group_and_frozen_left_out():
    model = CifarResNet18()
    for p in model.backbone[0].parameters():
        p.requires_grad_(False)
    groups = build_param_groups(
        model, [{"name": "stages", "params": ["backbone.*"]}], SGD_DEFAULTS, no_decay_split=True
    )
    in_groups = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert len(in_groups) == len(set(in_groups)) == len(trainable)
    assert set(in_groups) == trainable
    stem = {id(p) for p in model.backbone[0].parameters()}
    assert not stem & set(in_groups)


def test_rule_matching_only_frozen_parameters_is_dropped_with_a_warning():
    model = LeNet5()
    model.features.requires_grad_(False)
    with pytest.warns(UserWarning, match="'features' matches only frozen"):
        groups = build_param_groups(
            model, [{"name": "features", "modules": ["features"]}], SGD_DEFAULTS
        )
    assert names_by_group(model, groups) == {"default": LENET_CLASSIFIER}


def test_weight_decay_split_keeps_group_options():
    model = LeNet5()
    groups = build_param_groups(
        model,
        [{"name": "classifier", "modules": ["classifier"], "lr": 0.5, "momentum": 0.5}],
        SGD_DEFAULTS,
        no_decay_split=True,
    )
    no_decay = next(g for g in groups if g["name"] == "classifier.no_decay")
    assert (no_decay["lr"], no_decay["momentum"], no_decay["weight_decay"]) == (0.5, 0.5, 0.0)
    assert [g["name"] for g in groups] == [
        "classifier",
        "classifier.no_decay",
        "default",
        "default.no_decay",
    ]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [{"name": "x", "modules": ["featurez"]}],
            r"unknown module 'featurez' \(did you mean 'features'\?\); modules that exist: "
            r"\['features', 'features.0',",
        ),
        (
            [{"name": "a", "modules": ["features"]}, {"name": "a", "modules": ["classifier"]}],
            r"duplicate parameter group name 'a'",
        ),
        ([{"name": "x", "params": ["nothing.*"]}], r"'x' matches no parameter"),
        (
            [{"name": "all", "params": ["*"]}, {"name": "late", "modules": ["classifier"]}],
            r"'late' matches no parameter",
        ),
        (
            [{"name": "x", "modules": ["features"], "betas": [0.9, 0.99]}],
            r"sets 'betas', which the optimizer does not take; valid options: \[.*\], and the "
            r"rule keys \['lr_scale', 'modules', 'name', 'params'\]",
        ),
        (
            [{"name": "x", "modules": ["features"], "lr_scal": 2, "betas": [0.9, 0.99]}],
            r"sets 'betas', 'lr_scal' \(did you mean 'lr_scale'\?\), which the optimizer",
        ),
        ([{"name": "x", "modules": ["features"], "lr": 1, "lr_scale": 2}], "both 'lr' and"),
        ([{"name": "default", "modules": ["features"]}], "'default' is reserved"),
        ([{"name": "x.no_decay", "modules": ["features"]}], "'x.no_decay' is reserved"),
        ([{"name": "x"}], "'x' selects nothing"),
        ([{"modules": ["features"]}], "needs a non-empty 'name'"),
        ([{"name": "x", "modules": "features"}], "'modules' must be a list of strings"),
    ],
)
def test_bad_rules_are_clear_errors(rules, message):
    with pytest.raises(ParamGroupError, match=message):
        build_param_groups(LeNet5(), rules, SGD_DEFAULTS)


def test_no_decay_split_needs_weight_decay_option():
    lbfgs_defaults = torch.optim.LBFGS([torch.zeros(1)]).defaults
    with pytest.raises(ParamGroupError, match="needs an optimizer with a weight_decay option"):
        build_param_groups(LeNet5(), None, lbfgs_defaults, no_decay_split=True)


def test_group_table_lists_counts_and_options():
    model = LeNet5()
    groups = build_param_groups(
        model,
        [{"name": "features", "modules": ["features"], "lr": 0.01, "nesterov": True}],
        SGD_DEFAULTS,
    )
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=5e-4)
    rows = describe(optimizer.param_groups, optimizer.defaults)
    assert rows == [
        {
            "name": "features",
            "tensors": 4,
            "parameters": 456 + 2416,
            "lr": 0.01,
            "weight_decay": 5e-4,
            "momentum": 0.9,
            "nesterov": True,
        },
        {
            "name": "default",
            "tensors": 6,
            "parameters": 48120 + 10164 + 850,
            "lr": 0.1,
            "weight_decay": 5e-4,
            "momentum": 0.9,
            "nesterov": False,
        },
    ]
    table = format_table(rows).splitlines()
    assert table[0].split() == [
        "name", "tensors", "parameters", "lr", "weight_decay", "momentum", "nesterov"
    ]  # fmt: skip
    assert table[2].split() == ["features", "4", "2,872", "0.01", "0.0005", "0.9", "True"]

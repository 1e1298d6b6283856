"""build_param_groups: exact membership, options and errors."""

import pytest
import torch
from torch import nn

from groupwise.nets import CifarResNet18, LeNet5
from groupwise.optim.param_groups import (
    ParamGroupError,
    build_param_groups,
    check_partition,
    describe,
    format_table,
    parameter_names,
)

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
            r"rule keys \['lr_scale', 'modules', 'name', 'optimizer', 'params', 'schedule'\]",
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


# ---- tied and aliased parameters -----------------------------------------------------------


class TiedNet(nn.Module):
    """An embedding whose weight the output layer shares (a tied head), as language models do."""

    def __init__(self, head_bias: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=head_bias)
        self.head.weight = self.embed.weight


class TwoNames(nn.Module):
    """One linear layer registered under two names, ``a`` and ``b``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = self.a
        self.c = nn.Linear(2, 3)


def groups_by_identity(groups: list[dict]) -> dict[str, set[int]]:
    return {g["name"]: {id(p) for p in g["params"]} for g in groups}


def test_a_tied_weight_goes_with_the_module_that_names_it():
    model = TiedNet()
    groups = build_param_groups(model, [{"name": "head", "modules": ["head"]}], SGD_DEFAULTS)
    assert groups_by_identity(groups) == {
        "head": {id(model.head.weight), id(model.head.bias)},
        "default": {id(model.body.weight), id(model.body.bias)},
    }
    assert model.head.weight is model.embed.weight  # so the embedding trains at the head's lr


def test_a_tied_weight_alone_is_not_a_rule_that_matches_nothing():
    model = TiedNet(head_bias=False)
    groups = build_param_groups(model, [{"name": "head", "params": ["head.*"]}], SGD_DEFAULTS)
    assert groups_by_identity(groups)["head"] == {id(model.embed.weight)}


def test_the_first_rule_matching_any_name_of_a_tied_weight_wins():
    model = TiedNet()
    rules = [
        {"name": "embed", "modules": ["embed"], "lr_scale": 0.5},
        {"name": "head", "modules": ["head"]},
    ]
    groups = build_param_groups(model, rules, SGD_DEFAULTS)
    assert groups_by_identity(groups) == {
        "embed": {id(model.embed.weight)},
        "head": {id(model.head.bias)},
        "default": {id(model.body.weight), id(model.body.bias)},
    }
    # the other order: the head's rule comes first and takes the shared weight
    with pytest.raises(ParamGroupError, match="'embed' matches no parameter"):
        build_param_groups(model, rules[::-1], SGD_DEFAULTS)


def test_a_module_registered_under_two_names_is_found_under_either():
    model = TwoNames()
    groups = build_param_groups(model, [{"name": "b", "modules": ["b"]}], SGD_DEFAULTS)
    assert groups_by_identity(groups) == {
        "b": {id(model.a.weight), id(model.a.bias)},
        "default": {id(model.c.weight), id(model.c.bias)},
    }


def test_the_exactly_once_check_names_a_tied_weight_in_two_groups_by_all_its_names():
    model = TiedNet()
    twice = [  # what a builder that assigned each name on its own would return
        {"name": "embed", "params": [model.embed.weight]},
        {"name": "head", "params": [model.head.weight, model.head.bias]},
        {"name": "default", "params": [model.body.weight, model.body.bias]},
    ]
    with pytest.raises(ParamGroupError) as error:
        check_partition(model, twice)
    assert str(error.value) == (
        "parameter embed.weight (also head.weight) is in two groups: 'embed' and 'head'"
    )
    missing = [{"name": "default", "params": [model.body.weight, model.body.bias]}]
    with pytest.raises(ParamGroupError) as error:
        check_partition(model, missing)
    assert str(error.value) == (
        "trainable parameters in no group: ['embed.weight (also head.weight)', 'head.bias']"
    )
    check_partition(model, build_param_groups(model, None, SGD_DEFAULTS))  # the real one passes


def test_group_table_shows_a_tied_weight_once_with_its_names():
    model = TiedNet()
    groups = build_param_groups(model, [{"name": "head", "modules": ["head"]}], SGD_DEFAULTS)
    optimizer = torch.optim.SGD(groups, lr=0.1)
    rows = describe(optimizer.param_groups, optimizer.defaults, parameter_names(model))
    assert [(r["name"], r["tensors"], r["parameters"], r["tied"]) for r in rows] == [
        ("head", 2, 40 + 10, "embed.weight = head.weight"),
        ("default", 2, 16 + 4, ""),
    ]
    # without shared parameters there is no such column
    lenet = LeNet5()
    plain = torch.optim.SGD(build_param_groups(lenet, None, SGD_DEFAULTS), lr=0.1)
    assert "tied" not in describe(plain.param_groups, plain.defaults, parameter_names(lenet))[0]


# ---- modules and params in one rule ---------------------------------------------------------


def test_modules_and_params_together_select_the_patterns_within_the_modules():
    model = LeNet5()
    rules = [{"name": "classifier_biases", "modules": ["classifier"], "params": ["*.bias"]}]
    groups = build_param_groups(model, rules, SGD_DEFAULTS)
    assert names_by_group(model, groups) == {
        "classifier_biases": {"classifier.1.bias", "classifier.3.bias", "classifier.5.bias"},
        "default": LENET_FEATURES | LENET_CLASSIFIER - {f"classifier.{i}.bias" for i in (1, 3, 5)},
    }


def test_modules_and_params_with_an_empty_intersection_match_nothing():
    rules = [{"name": "x", "modules": ["features"], "params": ["classifier.*"]}]
    with pytest.raises(ParamGroupError, match=r"'x' matches no parameter .*in a listed module"):
        build_param_groups(LeNet5(), rules, SGD_DEFAULTS)


# ---- lr_scale needs a default lr ------------------------------------------------------------


@pytest.mark.parametrize("defaults", [{"momentum": 0.9}, {"lr": None, "momentum": 0.9}])
def test_lr_scale_with_an_optimizer_without_a_default_lr_is_a_clear_error(defaults):
    rules = [{"name": "features", "modules": ["features"], "lr_scale": 10.0}]
    with pytest.raises(ParamGroupError) as error:
        build_param_groups(LeNet5(), rules, defaults)
    assert str(error.value) == (
        "parameter group 'features' sets lr_scale, but the optimizer has no default lr to "
        f"scale (its lr is {defaults.get('lr')}); give the group an 'lr' instead"
    )


# ---- every module and pattern of a rule must be used (issue 21.6) ----------------------------


class NormNet(nn.Module):
    """A linear layer and a norm: parameter names fc.weight, fc.bias, norm.weight, norm.bias."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)


def test_a_mistyped_pattern_beside_a_matching_one_is_an_error_naming_the_nearest_name():
    rules = [{"name": "no_decay", "params": ["*.bias", "nrom.weight"], "weight_decay": 0.0}]
    with pytest.raises(ParamGroupError) as error:
        build_param_groups(NormNet(), rules, SGD_DEFAULTS)
    assert str(error.value) == (
        "parameter group 'no_decay': pattern 'nrom.weight' matches no parameter name (did you "
        "mean 'norm.weight'?); every module and pattern of a rule must select at least one "
        "parameter that the rule takes (parameter names look like ['fc.weight', 'fc.bias', "
        "'norm.weight', 'norm.bias'])"
    )


def test_a_rule_of_one_mistyped_name_names_the_nearest_name():
    rules = [{"name": "head", "params": ["clasifier.5.weight"]}]
    with pytest.raises(ParamGroupError, match=r"did you mean 'classifier\.5\.weight'\?"):
        build_param_groups(LeNet5(), rules, SGD_DEFAULTS)


def test_a_pattern_whose_parameters_an_earlier_rule_took_is_an_error_naming_that_rule():
    rules = [
        {"name": "biases", "params": ["*.bias"], "weight_decay": 0.0},
        {"name": "norm", "params": ["norm.*", "fc.bias"], "lr": 0.4},
    ]
    with pytest.raises(ParamGroupError) as error:
        build_param_groups(NormNet(), rules, SGD_DEFAULTS)
    assert str(error.value) == (
        "parameter group 'norm': pattern 'fc.bias' selects only parameters that earlier groups "
        "took: 'biases' (fc.bias); every module and pattern of a rule must select at least one "
        "parameter that the rule takes (parameter names look like ['fc.weight', 'fc.bias', "
        "'norm.weight', 'norm.bias'])"
    )


def test_a_listed_module_without_parameters_in_a_matching_rule_is_an_error():
    rules = [{"name": "x", "modules": ["features.0", "features.1"]}]  # features.1: a ReLU
    with pytest.raises(ParamGroupError, match=r"module 'features.1' has no parameter \(did you"):
        build_param_groups(LeNet5(), rules, SGD_DEFAULTS)
    rules = [{"name": "x", "modules": ["features", "classifier"], "params": ["features.*"]}]
    with pytest.raises(
        ParamGroupError, match=r"module 'classifier' has no parameter matching params="
    ):
        build_param_groups(LeNet5(), rules, SGD_DEFAULTS)


def test_a_pattern_matching_only_frozen_parameters_of_its_rule_counts_as_used():
    model = NormNet()
    model.norm.requires_grad_(False)
    groups = build_param_groups(model, [{"name": "x", "params": ["fc.*", "norm.*"]}], SGD_DEFAULTS)
    assert names_by_group(model, groups) == {"x": {"fc.weight", "fc.bias"}}


# ---- names are names (issue 26.5) ------------------------------------------------------------


def test_a_rule_name_with_a_dot_is_refused():
    rules = [{"name": "features.conv", "modules": ["features"]}]
    with pytest.raises(ParamGroupError, match=r"'features\.conv' has a dot; .*'features_conv'"):
        build_param_groups(LeNet5(), rules, SGD_DEFAULTS)

"""The grouping promise as a property over generated nets and rule lists (issue 21).

Nets: a random tree of containers, linear layers (with or without bias), norms and bare
parameters, with tied weights (one layer's weight set to another's), modules registered
under a second name, and frozen parameters. Rules: random ``modules`` and ``params``
drawn from the net's real names, wildcards and one-character typos, some with their own
optimizer, with or without ``no_decay_split``. Through ``build_groups``, the function the
Classifier's ``configure_optimizers`` calls, the promise is:

- an unknown module is an error naming it;
- else a rule with a module or pattern that selects none of the parameters the rule takes
  (first match wins, under any name of a parameter) is an error naming the rule and that
  entry, and a literal pattern that matches no name names the nearest real name;
- else every trainable parameter is in exactly one group, by identity: the group of the
  first rule that matches any of its names (its ``.no_decay`` half for a bias or a tensor
  of at most one dimension), or ``default``; no frozen parameter and no empty group
  reaches the optimizer, and each group is stepped by its own rule's optimizer.

A layer-decay property: on a random chain net, every group of a ``layer_decay`` rule has
an lr that does not fall from the input side up, and the parameters before its first
listed module are in its lowest-lr part, not in ``default``; a block left out between two
listed ones (that no rule takes) is an error naming the two.

The issues' cases (a tied weight under its second name, a module under two names, the
typo beside a good pattern of 21.6, a pattern an earlier rule emptied) stay as examples
beside them.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import warnings
from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

from groupwise.optim.param_groups import ParamGroupError, build_param_groups
from groupwise.optim.per_group import build_groups

SGD = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
LEAF_NAMES = ["fc", "conv", "norm", "head", "embed"]


def sgd(params):
    return torch.optim.SGD(params, **SGD)


def adam(params):
    return torch.optim.Adam(params, lr=0.01)


# ---- generated nets --------------------------------------------------------------------------


@st.composite
def nets(draw) -> nn.Module:
    """A small random net with shared weights, modules under two names and frozen params."""
    root = nn.Module()
    containers: list[nn.Module] = [root]
    leaves: list[nn.Module] = []
    for index in range(draw(st.integers(1, 7))):
        parent = draw(st.sampled_from(containers))
        name = f"{draw(st.sampled_from(LEAF_NAMES))}{index}"
        kind = draw(st.sampled_from(["container", "linear", "bias_free", "norm", "param"]))
        if kind == "container":
            child = nn.Sequential() if draw(st.booleans()) else nn.Module()
            containers.append(child)
            parent.add_module(name, child)
        elif kind == "param":
            parent.register_parameter(name, nn.Parameter(torch.zeros(2)))
        else:
            layer = nn.LayerNorm(2) if kind == "norm" else nn.Linear(2, 2, bias=kind == "linear")
            leaves.append(layer)
            parent.add_module(name, layer)
    if leaves and draw(st.booleans()):  # a tied weight: one layer uses another's
        first, second = draw(st.lists(st.sampled_from(leaves), min_size=2, max_size=2))
        second.weight = first.weight
    if leaves and draw(st.booleans()):  # a layer registered under a second name
        where = draw(st.sampled_from(containers))
        where.add_module(f"alias{len(containers)}", draw(st.sampled_from(leaves)))
    if len(containers) > 1 and draw(st.booleans()):  # a block under a second name
        root.add_module("again", draw(st.sampled_from(containers[1:])))
    for param in unique_params(root):
        param.requires_grad_(draw(st.integers(0, 5)) > 0)  # one in six frozen
    return root


def unique_params(model: nn.Module) -> list[nn.Parameter]:
    found = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        found.setdefault(id(param), param)
    return list(found.values())


def all_names(model: nn.Module) -> dict[int, list[str]]:
    """id -> every name of each parameter, in registration order."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def typo(draw, word: str) -> str:
    """``word`` with one character replaced, dropped or doubled."""
    at = draw(st.integers(0, len(word) - 1))
    how = draw(st.sampled_from(["replace", "drop", "double"]))
    if how == "replace":
        return word[:at] + draw(st.sampled_from("abxz0")) + word[at + 1 :]
    if how == "drop":
        return word[:at] + word[at + 1 :]
    return word[:at] + word[at] + word[at:]


@st.composite
def nets_and_rules(draw):
    model = draw(nets())
    modules = [n for n, _ in model.named_modules(remove_duplicate=False) if n]
    names = [n for names in all_names(model).values() for n in names]
    rules = []
    for index in range(draw(st.integers(0, 4))):
        rule: dict = {"name": f"r{index}"}
        chosen_modules = []
        for _ in range(draw(st.integers(0, 2))):
            if modules and draw(st.integers(0, 9)) > 0:
                chosen_modules.append(draw(st.sampled_from(modules)))
            elif modules:
                chosen_modules.append(typo(draw, draw(st.sampled_from(modules))))
        patterns = []
        for _ in range(draw(st.integers(0 if chosen_modules else 1, 2))):
            kind = draw(st.sampled_from(["name", "name", "typo", "wild", "module"]))
            if kind == "wild" or not names:
                patterns.append(draw(st.sampled_from(["*", "*.weight", "*.bias", "*norm*"])))
            elif kind == "module" and modules:
                patterns.append(f"{draw(st.sampled_from(modules))}.*")
            elif kind == "typo":
                patterns.append(typo(draw, draw(st.sampled_from(names))))
            else:
                patterns.append(draw(st.sampled_from(names)))
        if chosen_modules:
            rule["modules"] = chosen_modules
        if patterns:
            rule["params"] = patterns
        if draw(st.integers(0, 3)) == 0:
            rule["optimizer"] = adam
        rules.append(rule)
    return model, rules, draw(st.booleans())


# ---- the promise, written out ----------------------------------------------------------------


def selects(name: str, modules: list[str], patterns: list[str]) -> bool:
    """The documented meaning of a rule: in one of the modules and/or matching a pattern
    (both, when the rule gives both)."""
    in_module = any(name.startswith(module + ".") for module in modules)
    matched = any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
    return in_module and matched if modules and patterns else in_module or matched


@dataclass
class Expected:
    error: str | None = None  # a regex the error must match
    nearest_for: str | None = None  # a typo whose error must name the nearest name
    groups: dict[str, set[int]] = field(default_factory=dict)
    own_optimizer: dict[str, bool] = field(default_factory=dict)
    frozen_only: list[str] = field(default_factory=list)


def expected(model: nn.Module, rules: list[dict], split: bool) -> Expected:
    names = all_names(model)
    params = {id(p): p for p in unique_params(model)}
    existing = {n for n, _ in model.named_modules(remove_duplicate=False)}
    for rule in rules:
        for module in rule.get("modules", []):
            if module not in existing:
                return Expected(error=rf"unknown module {re.escape(repr(module))}")
    owner: dict[int, int | None] = {}
    for key, aliases in names.items():
        owner[key] = next(
            (
                i
                for i, rule in enumerate(rules)
                if any(selects(n, rule.get("modules", []), rule.get("params", [])) for n in aliases)
            ),
            None,
        )
    for i, rule in enumerate(rules):
        modules, patterns = rule.get("modules", []), rule.get("params", [])
        entries = [(m, [m], patterns) for m in modules] + [(p, modules, [p]) for p in patterns]
        for entry, entry_modules, entry_patterns in entries:
            chosen = [
                k
                for k, aliases in names.items()
                if any(selects(n, entry_modules, entry_patterns) for n in aliases)
            ]
            if not any(owner[k] == i for k in chosen):
                literal = entry in patterns and not chosen and not modules
                literal = literal and not any(c in entry for c in "*?[")
                return Expected(
                    error=rf"parameter group '{rule['name']}'.* {re.escape(repr(entry))}",
                    nearest_for=entry if literal else None,
                )
    result = Expected()
    for i, rule in enumerate([*rules, {"name": "default"}]):
        mine = [k for k in names if owner[k] == (i if i < len(rules) else None)]
        trainable = [k for k in mine if params[k].requires_grad]
        if mine and not trainable and i < len(rules):
            result.frozen_only.append(rule["name"])
        halves: dict[str, set[int]] = {rule["name"]: set(), rule["name"] + ".no_decay": set()}
        for k in trainable:
            half = split and (params[k].ndim <= 1 or names[k][0].endswith(".bias"))
            halves[rule["name"] + (".no_decay" if half else "")].add(k)
        result.groups.update((name, ks) for name, ks in halves.items() if ks)
        for name in result.groups:
            if name.split(".")[0] == rule["name"]:
                result.own_optimizer[name] = "optimizer" in rule
    return result


def check(model: nn.Module, rules: list[dict], split: bool) -> None:
    promise = expected(model, rules, split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            groups, factories = build_groups(model, rules, sgd, split)
        except ParamGroupError as error:
            message = str(error)
            assert promise.error is not None, f"refused a valid rule list: {message}"
            assert re.search(promise.error, message), message
            if promise.nearest_for is not None:
                assert_names_the_nearest(model, promise.nearest_for, message)
            return
    assert promise.error is None, f"accepted, but expected an error matching {promise.error}"
    assert {g["name"]: {id(p) for p in g["params"]} for g in groups} == promise.groups
    assert [g["name"] for g in groups] == list(promise.groups)  # in the rules' order
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # no parameter twice, even within a group
    assert {g["name"]: f is not None for g, f in zip(groups, factories, strict=True)} == (
        promise.own_optimizer
    )
    frozen = [
        re.match(r"parameter group '(\w+)' matches only frozen", str(w.message)) for w in caught
    ]
    warned = [match[1] for match in frozen if match]
    assert warned == promise.frozen_only


def assert_names_the_nearest(model: nn.Module, typo_: str, message: str) -> None:
    """The message suggests a real parameter name at least as close as any other."""
    suggested = re.search(r"did you mean '([^']+)'\?", message)
    assert suggested, message
    names = {n for aliases in all_names(model).values() for n in aliases}
    assert suggested[1] in names
    ratio = {n: difflib.SequenceMatcher(None, n, typo_).ratio() for n in names}
    assert ratio[suggested[1]] == max(ratio.values())


@settings(max_examples=1000, deadline=None)
@given(nets_and_rules())
def test_every_trainable_parameter_in_its_first_rule_s_group_and_every_entry_used(case):
    promise = expected(*case)
    event("accepted" if promise.error is None else promise.error.split(" ")[0])
    event(f"nearest name checked: {promise.nearest_for is not None}")
    check(*case)


# ---- examples beside the property -------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(2, 2)
        self.head = nn.Linear(2, 2)
        self.head.weight = self.embed.weight
        self.norm = nn.LayerNorm(2)
        self.again = self.norm


@pytest.mark.parametrize(
    "rules",
    [
        [{"name": "a", "params": ["head.weight"]}],  # a tied weight under its second name
        [{"name": "a", "modules": ["again"]}, {"name": "b", "params": ["norm.*"]}],
        [{"name": "a", "params": ["*.bias", "nrom.weight"]}],  # issue 21.6
        [{"name": "a", "params": ["*"]}, {"name": "b", "params": ["embed.bias"]}],
        [{"name": "a", "modules": ["embed"], "params": ["*.bias"], "optimizer": adam}],
    ],
)
@pytest.mark.parametrize("split", [False, True])
def test_examples(rules, split):
    check(Tied(), rules, split)


# ---- layer decay -----------------------------------------------------------------------------


@st.composite
def chains(draw):
    """A chain net (a stem, then blocks), and a layer-decay rule over some of its blocks."""
    net = nn.Module()
    if draw(st.booleans()):
        net.pos = nn.Parameter(torch.zeros(2, 2))
    if draw(st.booleans()):
        net.stem = nn.Linear(2, 2)
    blocks = draw(st.integers(1, 4))
    net.blocks = nn.Sequential(*[nn.Linear(2, 2) for _ in range(blocks)])
    net.head = nn.Linear(2, 2)
    indices = sorted(draw(st.sets(st.integers(0, blocks - 1), min_size=1)))
    listed = [f"blocks.{i}" for i in indices]  # a block left out between two: an error
    decay = draw(st.floats(0.1, 1.0))
    rule = {"name": "body", "modules": listed, "layer_decay": decay}
    return net, rule, draw(st.booleans())


@settings(max_examples=200, deadline=None)
@given(chains())
def test_layer_decay_lrs_never_fall_from_the_input_side_up(case):
    net, rule, split = case
    rules = [rule, {"name": "top", "modules": ["head"]}]
    indices = [int(m.split(".")[1]) for m in rule["modules"]]
    if indices != list(range(indices[0], indices[-1] + 1)):  # a block between listed ones
        with pytest.raises(ParamGroupError, match=r"registered between 'blocks\.\d+' and"):
            build_param_groups(net, rules, SGD, split)
        return
    groups = build_param_groups(net, rules, SGD, split)
    parts = [g for g in groups if g["name"].startswith("body.")]
    lrs = [g["lr"] for g in parts]
    assert lrs == sorted(lrs) and max(lrs) <= SGD["lr"]
    registered = list(dict(net.named_parameters()).items())
    first = rule["modules"][0]
    before = {id(p) for n, p in registered[: [n for n, _ in registered].index(first + ".weight")]}
    lowest = {id(p) for g in parts if g["lr"] == min(lrs) for p in g["params"]}
    assert before <= lowest  # the stem trains at the lowest lr of the rule
    default = {id(p) for g in groups if g["name"].startswith("default") for p in g["params"]}
    top = [n for n, _ in registered].index(rule["modules"][-1] + ".weight")
    assert default <= {id(p) for _, p in registered[top:]}  # only blocks above the top one
    assert all(
        g.get("lr", SGD["lr"]) >= max(lrs) for g in groups if g["name"].startswith("default")
    )

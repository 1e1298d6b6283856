"""What `WeightInit.skip` promises, as a property over generated nets with tied weights and
shared modules: every tensor of a skipped module stays as it was, whichever other module it
is reachable through; every other weight and bias of a conv, linear or norm layer is set by
its rule.

A generated net: a few linear (4 -> 4) and batch-norm (4) layers, some inside a nested
block, some tensors tied between layers (a linear weight to another's, a norm weight to
another's, a bias to another's), some layers registered under a second name; ``skip`` picks
any of the names. Every tensor starts at 0.5, which no rule writes.
"""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from groupwise.callbacks.weight_init import WeightInit

START = 0.5


def kind_of(layer: nn.Module) -> str:
    return "linear" if isinstance(layer, nn.Linear) else "norm"


@st.composite
def tied_nets(draw):
    kinds = draw(st.lists(st.sampled_from(["linear", "norm"]), min_size=1, max_size=5))
    layers = [nn.Linear(4, 4) if kind == "linear" else nn.BatchNorm1d(4) for kind in kinds]
    net, block = nn.Module(), nn.Module()
    for index, layer in enumerate(layers):
        parent = block if draw(st.booleans()) else net
        parent.add_module(f"layer{index}", layer)
    net.add_module("block", block)
    biases = [(layer, "bias") for layer in layers]
    weights = {kind: [(layer, "weight") for layer in layers if kind_of(layer) == kind]
               for kind in ("linear", "norm")}  # fmt: skip
    for group in (biases, weights["linear"], weights["norm"]):
        for _ in range(draw(st.integers(0, 2)) if len(group) > 1 else 0):
            first, second = draw(st.permutations(range(len(group))))[:2]
            (a, name), (b, _) = group[first], group[second]
            setattr(b, name, getattr(a, name))
    for index in draw(st.lists(st.integers(0, len(layers) - 1), max_size=2, unique=True)):
        net.add_module(f"again{index}", layers[index])
    with torch.no_grad():
        for tensor in net.parameters():
            tensor.fill_(START)
    names = [name for name, _ in net.named_modules(remove_duplicate=False) if name]
    skip = draw(st.lists(st.sampled_from(names), max_size=3, unique=True))
    return net, skip


def protected(net: nn.Module, skip: list[str]) -> set[int]:
    """The ids of the tensors of every module with a name in ``skip`` or under one."""
    return {
        id(tensor)
        for name, module in net.named_modules(remove_duplicate=False)
        if any(name == s or name.startswith(f"{s}.") for s in skip)
        for tensor in module.parameters()
    }


@settings(max_examples=200, deadline=None)
@given(tied_nets())
def test_skip_keeps_every_tensor_of_a_skipped_module_and_the_rules_set_the_rest(case):
    net, skip = case
    kept = protected(net, skip)
    WeightInit(skip=skip, seed=0).apply(net)
    for module in net.modules():
        if not isinstance(module, nn.Linear | nn.BatchNorm1d):
            continue
        for name, tensor in module.named_parameters(recurse=False):
            if id(tensor) in kept:
                assert torch.all(tensor == START), name
            elif isinstance(module, nn.BatchNorm1d):
                assert torch.all(tensor == (1.0 if name == "weight" else 0.0)), name
            elif name == "bias":
                assert torch.all(tensor == 0.0)
            else:
                assert not torch.any(tensor == START)  # drawn from normal(0, 0.01)

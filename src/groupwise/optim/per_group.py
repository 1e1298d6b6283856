"""The optimizer of a model from group rules in which a group may name its own optimizer.

Pure functions, no Lightning import. A rule's ``optimizer`` is written like the model's::

    - name: filters
      params: ["*.conv*.weight"]
      optimizer:
        class_path: groupwise.optim.Muon
        init_args: {lr: 0.24, momentum: 0.6}
      weight_decay: 0.0           # an option of *this* group's optimizer

(or just ``optimizer: torch.optim.AdamW`` for the class with its own defaults). The rule's
other options are checked against that optimizer's defaults, and ``lr_scale`` multiplies
its lr. Groups of rules without one (the ``default`` group too) use the model's
optimizer. With no rule naming an optimizer, ``build_optimizer`` returns the model's
optimizer itself, exactly as before; otherwise a ``CombinedOptimizer`` with one child per
group, in the groups' order.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from groupwise.optim.combined import CombinedOptimizer, OptimizerFactory
from groupwise.optim.muon import MuonShapeError
from groupwise.optim.param_groups import (
    NO_DECAY_SUFFIX,
    ParamGroupError,
    build_param_groups,
    name_and_parents,
)


def template(factory: OptimizerFactory) -> Optimizer:
    """A throwaway instance (one 2-D parameter, which every optimizer here takes): its
    class and ``defaults`` are the configured ones."""
    return factory([torch.zeros(2, 2, requires_grad=True)])


def resolve_optimizer(spec: Any, group: str) -> OptimizerFactory:
    """A rule's ``optimizer`` (a class path, ``{class_path, init_args}``, or a callable)
    as a callable that takes the params; a ``ParamGroupError`` naming the group for an
    unknown class or an argument the class does not take."""
    if callable(spec):
        return spec
    if hasattr(spec, "as_dict"):  # a jsonargparse Namespace, as LightningCLI passes it
        spec = spec.as_dict()
    if isinstance(spec, str):
        path, init_args = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("class_path"), str):
        path, init_args = spec["class_path"], dict(spec.get("init_args") or {})
        extra = sorted(set(spec) - {"class_path", "init_args"})
        if extra:
            raise ParamGroupError(
                f"parameter group {group!r}: optimizer has unknown keys {extra}; give "
                "class_path and init_args"
            )
    else:
        raise ParamGroupError(
            f"parameter group {group!r}: optimizer must be a class path or "
            f"{{class_path: ..., init_args: {{...}}}}, got {spec!r}"
        )
    cls = _import_optimizer(path, group)
    signature = inspect.signature(cls)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    valid = [name for name in signature.parameters if name != "params"]
    unknown = sorted(set(init_args) - set(valid))
    if unknown and not takes_any:
        raise ParamGroupError(
            f"parameter group {group!r}: {path} does not take init_args {unknown}; it takes {valid}"
        )
    factory = functools.partial(cls, **init_args)
    try:
        template(factory)
    except (TypeError, ValueError) as error:
        raise ParamGroupError(f"parameter group {group!r}: {path}({init_args}): {error}") from error
    return factory


def _import_optimizer(path: str, group: str) -> type[Optimizer]:
    module_name, _, attribute = path.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ImportError as error:
        raise ParamGroupError(
            f"parameter group {group!r}: cannot import {module_name!r} for optimizer {path!r}"
        ) from error
    cls = getattr(module, attribute, None) if module else None
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        names = [
            f"{module_name}.{n}"
            for n, obj in vars(module or torch.optim).items()
            if isinstance(obj, type) and issubclass(obj, Optimizer)
        ]
        close = difflib.get_close_matches(path, names, n=3)
        raise ParamGroupError(
            f"parameter group {group!r}: {path!r} is no torch optimizer class"
            + (
                f"; did you mean {close}?"
                if close
                else "; e.g. torch.optim.AdamW, groupwise.optim.Muon"
            )
        )
    return cls


def rule_optimizers(rules: Sequence[Mapping[str, Any]] | None) -> dict[str, OptimizerFactory]:
    """Rule name -> the factory of its own optimizer, for the rules that name one."""
    return {
        rule["name"]: resolve_optimizer(rule["optimizer"], rule.get("name", "?"))
        for rule in rules or []
        if rule.get("optimizer") is not None
    }


def build_groups(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]] | None,
    default: OptimizerFactory,
    no_decay_split: bool = False,
) -> tuple[list[dict[str, Any]], list[OptimizerFactory | None]]:
    """The param groups (``build_param_groups``, each rule's options checked against its
    own optimizer), and for each group the factory of its own optimizer (``None``: the
    model's ``default``)."""
    own = rule_optimizers(rules)
    rule_defaults = {}
    for name, factory in own.items():
        instance = template(factory)
        rule_defaults[name] = (type(instance).__name__, instance.defaults)
    groups = build_param_groups(
        model, rules, template(default).defaults, no_decay_split, rule_defaults=rule_defaults
    )
    factories = [
        next((own[n] for n in name_and_parents(group["name"]) if n in own), None)
        for group in groups
    ]
    return groups, factories


def build_optimizer(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]] | None,
    default: OptimizerFactory,
    no_decay_split: bool = False,
) -> Optimizer:
    """The model's optimizer: ``default(groups)`` when no rule names its own optimizer,
    else a ``CombinedOptimizer`` with one child per group (``default`` for groups of rules
    without one), in the groups' order."""
    groups, factories = build_groups(model, rules, default, no_decay_split)
    if all(factory is None for factory in factories):
        return default(groups)
    names = {id(p): n for n, p in model.named_parameters()}
    children = [
        _child(factory or default, group, names)
        for group, factory in zip(groups, factories, strict=True)
    ]
    return CombinedOptimizer(children, default=default)


def _child(factory: OptimizerFactory, group: dict[str, Any], names: Mapping[int, str]) -> Optimizer:
    try:
        return factory([group])
    except MuonShapeError as error:
        param = group["params"][error.index]
        raise ParamGroupError(
            f"parameter group {group['name']!r} uses Muon, which takes only weight matrices "
            f"and conv filters (2 or more dimensions); {names[id(param)]} has shape "
            f"{tuple(param.shape)}. Match only such weights in this group (e.g. params: "
            '["*.conv*.weight"]) and leave biases and norm weights to another group'
            + (
                " (no_decay_split puts them into its '.no_decay' half)"
                if group["name"].endswith(NO_DECAY_SUFFIX)
                else ""
            )
        ) from error

"""The space file of ``groupwise sweep``: config keys mapped to Optuna distributions.

A space file is a YAML mapping from a key of the complete ``fit`` config (the one
``groupwise fit --print_config`` shows) to one distribution::

    model.optimizer.init_args.lr: {log_float: [1.0e-3, 5.0e-2]}
    model.param_groups.classifier.lr_scale: {float: [1, 30]}
    model.optimizer.init_args.momentum: {categorical: [0.8, 0.9, 0.95]}
    trainer.max_epochs: {int: [2, 6]}

A list entry is named by its ``name`` (a group rule: ``model.param_groups.classifier``) or
by its index; a group rule may get an option it does not have yet (``weight_decay``,
``lr``, ``layer_decay``, ``momentum``: a rule key or an argument of the rule's optimizer).
Optuna checks the bounds (its distributions' own checks); what it lacks, and is here, is
the mapping from dotted keys to a nested config and a message that names the key.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from groupwise.errors import ConfigError, did_you_mean

KINDS = ("float", "log_float", "int", "log_int", "categorical")
GROUP_RULES = "model.param_groups"
# keys a group rule takes besides its optimizer's arguments (groupwise.optim.param_groups)
RULE_KEYS = ("name", "modules", "params", "lr_scale", "optimizer", "lr", "layer_decay")

Space = dict[str, BaseDistribution]


def load_space(path: str | Path, config: Mapping[str, Any]) -> Space:
    """The distributions of the space file at ``path``, each key checked against the
    complete ``config``; one ``ConfigError`` naming the file, the key and what is valid."""
    try:
        with open(path) as file:
            raw = yaml.safe_load(file)
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read space file {path}: {error}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"space file {path}: expected a mapping of config keys to distributions, such as"
            " 'model.optimizer.init_args.lr: {log_float: [1.0e-3, 1.0e-1]}'; got"
            f" {type(raw).__name__} {raw!r}"
        )
    space = {}
    for key, spec in raw.items():
        try:
            locate(config, str(key))
            space[str(key)] = distribution(spec)
        except ConfigError as error:
            raise ConfigError(f"space file {path}: {key}: {error}") from None
    return space


def distribution(spec: Any) -> BaseDistribution:
    """``{kind: [low, high]}`` or ``{categorical: [choices]}`` as Optuna's distribution."""
    if not (isinstance(spec, dict) and len(spec) == 1):
        raise ConfigError(
            f"{spec!r} is not a distribution: write one of {', '.join(KINDS)} with its"
            " bounds, e.g. {log_float: [1.0e-4, 1.0e-1]} or {categorical: [0.8, 0.9]}"
        )
    ((kind, args),) = spec.items()
    if kind not in KINDS:
        raise ConfigError(
            f"unknown distribution {kind!r}{did_you_mean(kind, KINDS)}; valid: {KINDS}"
        )
    if kind == "categorical":
        if not (isinstance(args, list) and args):
            raise ConfigError(f"categorical takes a non-empty list of choices, not {args!r}")
        bad = [c for c in args if not isinstance(c, (str, int, float, bool, type(None)))]
        if bad:
            raise ConfigError(
                f"categorical choices must be numbers, strings, booleans or null, not {bad[0]!r}"
            )
        return CategoricalDistribution(args)
    integer = kind.endswith("int")
    number = int if integer else (int, float)
    if not (
        isinstance(args, list)
        and len(args) == 2
        and all(isinstance(a, number) and not isinstance(a, bool) for a in args)
        and all(math.isfinite(a) for a in args)
    ):
        what = "integers" if integer else "finite numbers"
        raise ConfigError(f"{kind} takes [low, high], two {what}, not {args!r}")
    low, high = args
    if low >= high:
        raise ConfigError(f"{kind} needs low < high, got [{low}, {high}]")
    if kind.startswith("log") and low <= 0:
        raise ConfigError(f"{kind} needs low > 0 (a log scale), got [{low}, {high}]")
    log = kind.startswith("log")
    return IntDistribution(low, high, log=log) if integer else FloatDistribution(low, high, log=log)


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """The trial's value for every key of ``space`` (Optuna's ``suggest_*`` calls)."""
    values = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[key] = trial.suggest_int(key, dist.low, dist.high, log=dist.log)
        else:
            values[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log)
    return values


def apply(config: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with each dotted key of ``values`` set."""
    config = copy.deepcopy(dict(config))
    places = [(*locate(config, key), value) for key, value in values.items()]  # all, then set
    for parent, leaf, value in places:
        parent[leaf] = value
    return config


def locate(config: Mapping[str, Any], key: str) -> tuple[Any, Any]:
    """The container holding ``key`` and the key or index in it; ``ConfigError`` naming
    the nearest existing key when there is none."""
    parts = key.split(".")
    node: Any = config
    in_list = False
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = ".".join(parts[:depth])
        if isinstance(node, dict):
            if part in node:
                if last and part == "name" and in_list:
                    raise ConfigError(
                        f"{key!r} names the entry: it cannot be searched (the other keys"
                        " find the entry by it)"
                    )
                if last:
                    return node, part
                node, in_list = node[part], False
                continue
            if last and here.startswith(GROUP_RULES + ".") and depth == 3:
                check_rule_option(config, node, part)
                return node, part
        elif isinstance(node, list):
            index = list_index(node, part)
            if index is not None:
                if last:
                    return node, index
                node, in_list = node[index], True
                continue
        raise ConfigError(
            f"{key!r} is no key of the config{did_you_mean(key, flat_keys(config))};"
            " keys are those `groupwise fit --print_config` shows, a group rule named by"
            " its name (model.param_groups.<name>.lr_scale)"
        )
    raise AssertionError("unreachable")


def list_index(items: list, part: str) -> int | None:
    """The entry whose ``name`` is ``part``, or the index ``part``."""
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return index
    if part.isdigit() and int(part) < len(items):
        return int(part)
    return None


def check_rule_option(config: Mapping[str, Any], rule: Mapping[str, Any], option: str) -> None:
    """A new option of a group rule must be a rule key or an argument of the rule's own
    optimizer (else of ``model.optimizer``)."""
    spec = rule.get("optimizer") or config.get("model", {}).get("optimizer") or {}
    path = spec.get("class_path", "") if isinstance(spec, dict) else ""
    module, _, name = path.rpartition(".")
    try:
        optimizer = getattr(importlib.import_module(module), name)
        arguments = [p for p in inspect.signature(optimizer).parameters if p != "params"]
    except (ImportError, AttributeError, ValueError):
        arguments = []
    if option not in (*RULE_KEYS, *arguments):
        valid = sorted({*RULE_KEYS, *arguments})
        raise ConfigError(
            f"group rule {rule.get('name')!r} takes no option {option!r}"
            f"{did_you_mean(option, valid)}; valid: {valid}"
        )


def flat_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a nested config (list entries by name, else by index)."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = [
            (item.get("name", i) if isinstance(item, dict) else i, item)
            for i, item in enumerate(node)
        ]
    else:
        return
    for key, value in items:
        full = f"{prefix}{key}"
        yield full
        yield from flat_keys(value, full + ".")


def short_names(keys: list[str]) -> dict[str, str]:
    """Each key's shortest dotted suffix that no other key ends with (table headers)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != key and (o == tail or o.endswith("." + tail)) for o in keys):
                names[key] = tail
                break
        else:
            names[key] = key
    return names

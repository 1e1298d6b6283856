"""Turn a model plus a YAML description of parameter groups into optimizer param groups.

Pure function, no Lightning import: `build_param_groups(model, rules, defaults)` returns
the list of dicts that any `torch.optim.Optimizer` takes, each with a ``name`` key (which
Lightning's ``LearningRateMonitor`` uses for its tags, e.g. ``lr-SGD/features``).

A rule is a dict as written in YAML::

    {"name": "classifier", "modules": ["classifier"], "params": ["fc.*"], "lr_scale": 10.0,
     "weight_decay": 0.0, ...any other option the optimizer takes}

Semantics:
- rules are tried in the order written; a parameter goes to the first rule that matches it
  (by submodule prefix in ``modules`` or by ``fnmatch`` pattern on its name in ``params``;
  with both, a parameter must be in one of the ``modules`` and match one of the ``params``
  patterns: ``{modules: [backbone], params: ["*.bias"]}`` is the backbone's biases);
- a parameter shared by several modules (a tied weight) or a module registered under
  several names is matched under every one of its names, by identity: it goes to the
  first rule that matches any of them (``named_parameters()`` and ``named_modules()``
  list each only under its first name, which is what they lack here);
- trainable parameters no rule matches go to the group ``default`` (optimizer defaults);
- frozen parameters (``requires_grad=False``) are left out;
- a rule's ``schedule`` (its groups' own lr curve, ``groupwise.optim.group_schedule``) is
  checked here and kept in each of its groups under ``schedule``, where the ``Classifier``
  reads it (and a resume compares it, as any group option);
- ``lr_scale`` is resolved here into an absolute ``lr`` (defaults' lr times the scale), so no
  group carries a key that the optimizer or scheduler would silently ignore;
- with ``no_decay_split`` each group's biases and norm parameters (``ndim <= 1``, as timm and
  nanoGPT do) go to ``<name>.no_decay`` with ``weight_decay=0``;
- no empty group is returned, and every trainable parameter is in exactly one group
  (``check_partition``, by identity, naming a parameter by all of its names);
- a rule with ``layer_decay: 0.7`` and ``modules`` listed from the input side up becomes
  one group per module, ``<name>.<module>``, at the rule's lr x ``0.7 ** depth`` from the
  top (``expand_layer_decay``); ``blocks.*`` stands for every block of ``blocks`` in order;
  the trainable parameters registered before the first listed module are the part
  ``<name>.stem``, one depth below it, unless another rule takes them.
  Group names are dotted paths: ``backbone.layer4.no_decay`` is part of ``backbone``; so a
  rule's own name has no dot.

Errors (``ParamGroupError``, a ``ValueError``) name the bad value, the nearest valid name
when it looks like a typo, and what would be valid:
a rule that matches no parameter, a module or pattern of a rule that selects none of the
parameters the rule takes (a typo beside a good pattern, or parameters an earlier rule
took), an unknown module name, a duplicate or reserved group name, a rule name with a
dot, an option the optimizer does not take, ``lr`` together with ``lr_scale``, ``lr_scale``
with an optimizer that has no default ``lr``, a ``layer_decay`` outside (0, 1] or without
``modules``.
"""

from __future__ import annotations

import fnmatch
import glob
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from groupwise.errors import ConfigError, did_you_mean
from groupwise.optim.group_schedule import SCHEDULE_KEY, parse_schedule, schedule_column

DEFAULT_GROUP = "default"
NO_DECAY_SUFFIX = ".no_decay"
# Keys of a rule that select parameters or name the group; every other key is an option.
RULE_KEYS = frozenset({"name", "modules", "params", "lr_scale", "optimizer", SCHEDULE_KEY})
LAYER_DECAY_KEY = "layer_decay"  # expanded into one rule per module by expand_layer_decay
LAYER_DECAY_OWN_KEYS = ("name", "modules", "lr", LAYER_DECAY_KEY)
NO_DECAY_OPTIONS = {"weight_decay": 0.0}
FOLLOWS_RUN = "model.scheduler"  # the schedule column of a group without its own


class ParamGroupError(ConfigError):
    """A parameter-group description that cannot be applied to the model."""


def build_param_groups(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]] | None,
    defaults: Mapping[str, Any],
    no_decay_split: bool = False,
    rule_defaults: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Build named optimizer param groups for ``model`` from ``rules``.

    Args:
        model: the network whose parameters are grouped; names are relative to it.
        rules: group descriptions in priority order (see the module docstring).
        defaults: the optimizer's defaults (``optimizer.defaults``): the options a group
            may set, and the base ``lr`` that ``lr_scale`` multiplies.
        no_decay_split: move biases and norm parameters of each group to
            ``<name>.no_decay`` with ``weight_decay=0``.
        rule_defaults: for the rules that name their own optimizer (by rule name), that
            optimizer's name and defaults, used instead of ``defaults`` for the rule.

    Returns:
        A list of dicts with ``name``, ``params`` and the group's own options.
    """
    rules = list(rules or [])
    _check_names(rules, written=True)
    own = dict(rule_defaults or {})
    rules, below, between = _expand(model, rules, defaults, own)
    _check_names(rules)
    for label, opts in [("this one", defaults), *own.values()]:
        if no_decay_split and "weight_decay" not in opts:
            raise ParamGroupError(
                f"no_decay_split needs an optimizer with a weight_decay option; {label} takes "
                f"{sorted(opts)}"
            )
    options = [
        _group_options(rule, *_rule_optimizer(rule["name"], own, defaults)) for rule in rules
    ]
    prefixes = [_module_prefixes(model, rule) for rule in rules]
    # the parts below a layer-decay rule's listed modules take only what no other rule takes
    order = [i for i in range(len(rules)) if i not in below] + sorted(below)

    params = named_parameters_with_aliases(model)
    owners = [_first_rule(names, rules, prefixes, order) for names, _ in params]
    for index in range(len(rules)):
        if index not in below:
            _check_rule_used(model, rules, prefixes, params, owners, index)

    groups: list[dict[str, Any]] = []
    for index, (rule, opts) in enumerate(zip(rules, options, strict=True)):
        members = [
            (names[0], param)
            for (names, param), owner in zip(params, owners, strict=True)
            if owner == index and param.requires_grad
        ]
        if not members and index not in below:
            warnings.warn(
                f"parameter group {rule['name']!r} matches only frozen parameters; "
                "it is left out of the optimizer",
                stacklevel=2,
            )
        groups += _split(rule["name"], members, opts, no_decay_split)
    unmatched = [
        (names[0], param)
        for (names, param), owner in zip(params, owners, strict=True)
        if owner is None and param.requires_grad
    ]
    _check_none_between(unmatched, between)
    groups += _split(DEFAULT_GROUP, unmatched, {}, no_decay_split)
    check_partition(model, groups)
    return groups


def _check_none_between(
    unmatched: Sequence[tuple[str, nn.Parameter]], between: Mapping[str, tuple[str, str, str]]
) -> None:
    """A parameter registered between two listed modules of a layer-decay rule that no rule
    takes is an error: in ``default`` it would train at the full lr among decayed layers."""
    left = [name for name, _ in unmatched if name in between]
    if left:
        rule, low, high = between[left[0]]
        shown = ", ".join(left[:4]) + (f" and {len(left) - 4} more" if len(left) > 4 else "")
        raise ParamGroupError(
            f"parameter group {rule!r} sets layer_decay, but {shown} (registered between "
            f"{low!r} and {high!r}) are in none of its modules and no rule takes them: they "
            "would train in 'default' at the full lr, above the decayed layers around them. "
            "List their module in 'modules' in its place, or give them a rule of their own"
        )


def _check_rule_used(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]],
    prefixes: Sequence[Sequence[str]],
    params: Sequence[tuple[list[str], nn.Parameter]],
    owners: Sequence[int | None],
    index: int,
) -> None:
    """Raise unless every module and every pattern of rule ``index`` selects at least one
    parameter that the rule takes (trainable or frozen): a typo in one pattern of a rule
    whose other patterns match would otherwise go unnoticed, and so would a pattern whose
    parameters an earlier rule took. The error names the entry and, for a typo, the
    nearest real name."""
    rule = rules[index]
    modules, patterns = list(rule.get("modules", [])), list(rule.get("params", []))
    entries = [("module", m, [p]) for m, p in zip(modules, prefixes[index], strict=True)]
    entries += [("pattern", pattern, None) for pattern in patterns]
    notes = []
    for kind, entry, entry_prefixes in entries:
        selected = [
            position
            for position, (names, _) in enumerate(params)
            if any(
                _selects(name, kind, entry, entry_prefixes, prefixes[index], rule) for name in names
            )
        ]
        if any(owners[position] == index for position in selected):
            continue
        notes.append(
            _unused_note(
                model, rules, params, owners, kind, entry, selected, prefixes[index], patterns
            )
        )
    taken = any(owner == index for owner in owners)
    if not taken:
        both = "; with both, a parameter must be in a listed module and match a pattern"
        raise ParamGroupError(
            f"parameter group {rule['name']!r} matches no parameter (modules={modules}, "
            f"params={patterns}{both if modules and patterns else ''}); parameter names look "
            f"like {_examples(model)}; " + "; ".join(notes)
        )
    if notes:
        names = [name for names, _ in params for name in names][:5]
        raise ParamGroupError(
            f"parameter group {rule['name']!r}: " + "; ".join(notes) + "; every module and "
            "pattern of a rule must select at least one parameter that the rule takes "
            f"(parameter names look like {names})"
        )


def _selects(
    name: str,
    kind: str,
    entry: str,
    entry_prefixes: Sequence[str] | None,
    rule_prefixes: Sequence[str],
    rule: Mapping[str, Any],
) -> bool:
    """Whether one module or pattern of a rule selects the parameter name ``name`` (within
    the rule's modules or patterns when the rule gives both)."""
    if kind == "module":
        return _matches(name, entry_prefixes, {"params": rule.get("params", [])})
    return _matches(name, rule_prefixes, {"params": [entry]})


def _unused_note(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]],
    params: Sequence[tuple[list[str], nn.Parameter]],
    owners: Sequence[int | None],
    kind: str,
    entry: str,
    selected: Sequence[int],
    rule_prefixes: Sequence[str],
    patterns: Sequence[str],
) -> str:
    """Why a module or pattern of a rule selects nothing: no such parameter (with the
    nearest real name), or only parameters that other rules took (naming them)."""
    if selected:
        by_rule: dict[str, list[str]] = {}
        for position in selected:
            by_rule.setdefault(rules[owners[position]]["name"], []).append(params[position][0][0])
        taken = ", ".join(
            f"{name!r} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
            for name, names in by_rule.items()
        )
        return f"{kind} {entry!r} selects only parameters that earlier groups took: {taken}"
    if kind == "module":
        where = f" matching params={list(patterns)}" if patterns else ""
        candidates = [
            n
            for n, module in model.named_modules(remove_duplicate=False)
            if n and n != entry and any(True for _ in module.parameters())
        ]
        return f"module {entry!r} has no parameter{where}{did_you_mean(entry, candidates)}"
    names = [name for names, _ in params for name in names]
    if rule_prefixes:
        names = [n for n in names if any(n.startswith(prefix) for prefix in rule_prefixes)]
        where = " of the listed modules"
    else:
        where = " name"
    return f"pattern {entry!r} matches no parameter{where}{did_you_mean(entry, names)}"


def named_parameters_with_aliases(model: nn.Module) -> list[tuple[list[str], nn.Parameter]]:
    """Each parameter of ``model`` once (by identity), with all of its names, in the order of
    ``named_parameters()``; a tied weight has several (``["embed.weight", "head.weight"]``)."""
    found: dict[int, tuple[list[str], nn.Parameter]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        found.setdefault(id(param), ([], param))[0].append(name)
    return list(found.values())


def parameter_names(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter)`` -> all of its names in ``model`` (for ``describe``)."""
    return {id(param): names for names, param in named_parameters_with_aliases(model)}


def _rule_optimizer(
    name: str, own: Mapping[str, tuple[str, Mapping[str, Any]]], defaults: Mapping[str, Any]
) -> tuple[str, Mapping[str, Any]]:
    """The name and defaults of the optimizer of the rule ``name``: its own (by its name or
    the rule it is part of) or the model's."""
    return next((own[n] for n in name_and_parents(name) if n in own), ("the optimizer", defaults))


def expand_layer_decay(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]],
    defaults: Mapping[str, Any],
    own: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Replace each rule with ``layer_decay`` by one rule per module it lists.

    ``{name: backbone, modules: [layer1, ..., layer4], layer_decay: 0.7}`` lists modules
    from the input side up; the module at depth ``d`` from the top (``layer4``: 1,
    ``layer3``: 2, ...) becomes the rule ``backbone.<module>`` with the absolute ``lr`` =
    the rule's lr x ``layer_decay ** d`` (the rule's lr: its ``lr``, its ``lr_scale`` x the
    optimizer's lr, or the optimizer's lr). An entry ``blocks.*`` stands for the children
    of ``blocks`` that have parameters, in order (the blocks of a ``ModuleList``). Every
    other key of the rule (``params``, ``weight_decay``, ...) goes to each of its parts.

    The trainable parameters the net registers before the first listed module (torchvision
    resnet18's ``conv1`` and ``bn1``, a ViT's ``pos_embed``) become one more part below
    it, ``backbone.stem`` at ``layer_decay ** (d + 1)``, holding those that no other rule
    takes (``build_param_groups`` matches it after every other rule); without it they
    would train in ``default`` at the full lr, above every decayed layer.

    What timm's ``param_groups_layer_decay`` does instead, and why not: it puts the factor
    in an ``lr_scale`` key that only timm's schedulers read (torch's schedulers and
    optimizers ignore it), and names the groups ``layer_0``, ``layer_1``, ....
    """
    return _expand(model, rules, defaults, own or {})[0]


def _expand(
    model: nn.Module,
    rules: Sequence[Mapping[str, Any]],
    defaults: Mapping[str, Any],
    own: Mapping[str, tuple[str, Mapping[str, Any]]],
) -> tuple[list[dict[str, Any]], set[int]]:
    """``expand_layer_decay``, the indices of the ``.stem`` parts among its rules, and the
    parameters registered between two listed modules of a rule (``_between_listed``)."""
    expanded: list[dict[str, Any]] = []
    below: set[int] = set()
    between: dict[str, tuple[str, str, str]] = {}
    for rule in rules:
        if LAYER_DECAY_KEY not in rule:
            expanded.append(dict(rule))
            continue
        name, decay = rule["name"], rule[LAYER_DECAY_KEY]
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1:
            raise ParamGroupError(
                f"parameter group {name!r}: layer_decay must be a number in (0, 1] (the lr "
                f"factor per layer from the top), got {decay!r}"
            )
        modules = _expand_modules(model, rule)
        label, rule_defaults = _rule_optimizer(name, own, defaults)
        base = _group_options({"name": name, **_lr_keys(rule)}, label, rule_defaults).get("lr")
        if base is None:
            base = rule_defaults.get("lr")
        if base is None:
            raise ParamGroupError(
                f"parameter group {name!r} sets layer_decay, but neither the group nor the "
                "optimizer has an lr to decay: give the group an 'lr'"
            )
        rest = {k: v for k, v in rule.items() if k not in (*LAYER_DECAY_OWN_KEYS, "lr_scale")}
        stem = _below_first(model, modules, rest.get("params"))
        between.update(_between_listed(model, name, modules, rest.get("params")))
        if stem:
            below.add(len(expanded))
            lr = base * decay ** (len(modules) + 1)
            expanded.append({**rest, "name": f"{name}.stem", "params": stem, "lr": lr})
        for index, module in enumerate(modules):
            depth = len(modules) - index
            lr = base * decay**depth
            expanded.append({**rest, "name": f"{name}.{module}", "modules": [module], "lr": lr})
    return expanded, below, between


def _between_listed(
    model: nn.Module, rule: str, modules: Sequence[str], patterns: Sequence[str] | None
) -> dict[str, tuple[str, str, str]]:
    """The trainable parameters (matching ``patterns``, if given) that ``model`` registers
    after a parameter of one listed module and before one of a later listed module, but in
    none of them (resnet18's ``layer2`` when the list skips it), each with the rule and the
    two listed modules around it: placed by no part of the rule, they would train in
    ``default`` at the full lr, between decayed layers."""
    named = dict(model.named_modules(remove_duplicate=False))
    owner = {id(p): m for m in reversed(modules) if m in named for p in named[m].parameters()}
    found, pending, previous = {}, [], None
    for names, param in named_parameters_with_aliases(model):
        module = owner.get(id(param))
        if module is not None:
            found.update({n: (rule, previous, module) for n in pending if previous != module})
            pending, previous = [], module
            continue
        matched = not patterns or any(
            fnmatch.fnmatchcase(n, pattern) for n in names for pattern in patterns
        )
        if previous is not None and param.requires_grad and matched:
            pending.append(names[0])
    return found


def _below_first(
    model: nn.Module, modules: Sequence[str], patterns: Sequence[str] | None
) -> list[str]:
    """The trainable parameters ``model`` registers before the first parameter of any of
    ``modules`` (that match one of ``patterns``, if given), as exact fnmatch patterns."""
    named = dict(model.named_modules(remove_duplicate=False))
    listed = {id(p) for m in modules if m in named for p in named[m].parameters()}
    found = []
    for names, param in named_parameters_with_aliases(model):
        if id(param) in listed:
            break
        matched = not patterns or any(
            fnmatch.fnmatchcase(n, pattern) for n in names for pattern in patterns
        )
        if param.requires_grad and matched:
            found.append(glob.escape(names[0]))
    return found


def _lr_keys(rule: Mapping[str, Any]) -> dict[str, Any]:
    return {key: rule[key] for key in ("lr", "lr_scale") if key in rule}


def _expand_modules(model: nn.Module, rule: Mapping[str, Any]) -> list[str]:
    """The modules a layer-decay rule lists, with each ``parent.*`` replaced by the children
    of ``parent`` that have parameters."""
    entries = rule.get("modules") or []
    if not entries:
        raise ParamGroupError(
            f"parameter group {rule['name']!r} sets layer_decay: it needs 'modules', listed "
            "from the input side up (e.g. [layer1, layer2, layer3, layer4] or ['blocks.*'])"
        )
    names = dict(model.named_modules())
    modules = []
    for entry in entries:
        if not (isinstance(entry, str) and entry.endswith(".*")):
            modules.append(entry)  # checked with the rule's other modules
            continue
        parent = entry[:-2]
        if parent not in names:
            raise ParamGroupError(
                f"parameter group {rule['name']!r}: unknown module {parent!r} in {entry!r}; "
                f"modules that exist: {_module_listing(names)}"
            )
        children = [
            f"{parent}.{child}"
            for child, module in names[parent].named_children()
            if any(True for _ in module.parameters())
        ]
        if not children:
            raise ParamGroupError(
                f"parameter group {rule['name']!r}: {entry!r} has no child module with parameters"
            )
        modules += children
    return modules


def _check_names(rules: Sequence[Mapping[str, Any]], written: bool = False) -> None:
    """Names, ``modules`` and ``params`` of rules; ``written``: the rules as the user wrote
    them, whose names may not have a dot (dots join a rule's name to the parts it makes)."""
    seen: set[str] = set()
    for position, rule in enumerate(rules):
        name = rule.get("name")
        if not isinstance(name, str) or not name:
            raise ParamGroupError(f"parameter group #{position} needs a non-empty 'name': {rule}")
        if name == DEFAULT_GROUP or name.endswith(NO_DECAY_SUFFIX):
            raise ParamGroupError(
                f"parameter group name {name!r} is reserved: {DEFAULT_GROUP!r} holds the "
                f"parameters no rule matches and '<name>{NO_DECAY_SUFFIX}' the no-decay half"
            )
        if written and "." in name:
            raise ParamGroupError(
                f"parameter group name {name!r} has a dot; a dot joins a rule's name to the "
                f"groups it makes ('<name>{NO_DECAY_SUFFIX}', '<name>.<module>' of a "
                f"layer_decay rule), so {name!r} would be taken for part of "
                f"{name.split('.')[0]!r} (its optimizer, FreezeGroups); use a name without "
                f"dots, e.g. {name.replace('.', '_')!r}"
            )
        if name in seen:
            raise ParamGroupError(
                f"duplicate parameter group name {name!r}; names so far: {sorted(seen)}"
            )
        seen.add(name)
        if not rule.get("modules") and not rule.get("params"):
            raise ParamGroupError(
                f"parameter group {name!r} selects nothing: give 'modules' (dotted submodule "
                "names) and/or 'params' (fnmatch patterns on parameter names)"
            )
        for key in ("modules", "params"):
            value = rule.get(key, [])
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ParamGroupError(
                    f"parameter group {name!r}: {key!r} must be a list of strings, got {value!r}"
                )


def _group_options(
    rule: Mapping[str, Any], label: str, defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """The options a rule sets for its optimizer (``label``: the optimizer, for errors),
    with ``lr_scale`` resolved to ``lr``."""
    opts = {key: value for key, value in rule.items() if key not in RULE_KEYS}
    unknown = sorted(set(opts) - set(defaults))
    if unknown:
        keys = ", ".join(f"{key!r}{did_you_mean(key, [*defaults, *RULE_KEYS])}" for key in unknown)
        message = (
            f"parameter group {rule['name']!r} sets {keys}, which {label} does not take;"
            f" valid options: {sorted(defaults)}, and the rule keys {sorted(RULE_KEYS)}"
        )
        # jsonargparse's reading of --model.param_groups.0.KEY: a key '0' holding KEY, or
        # (older jsonargparse) a key '0.KEY'
        index = next(
            (k.split(".")[0] for k in map(str, unknown) if k.split(".")[0].isdigit()), None
        )
        if index is not None:
            message += (
                f". {index!r} came from --model.param_groups.{index}...: one item of a list"
                " cannot be set from the command line (it lands in the last group); edit"
                " the config file, or give the whole list with --model.param_groups '[...]'"
            )
        raise ParamGroupError(message)
    if "lr_scale" in rule:
        if "lr" in rule:
            raise ParamGroupError(
                f"parameter group {rule['name']!r} sets both 'lr' and 'lr_scale'; give one"
            )
        if defaults.get("lr") is None:
            raise ParamGroupError(
                f"parameter group {rule['name']!r} sets lr_scale, but the optimizer has no "
                f"default lr to scale (its lr is {defaults.get('lr')}); give the group an "
                "'lr' instead"
            )
        opts["lr"] = defaults["lr"] * float(rule["lr_scale"])
    if rule.get(SCHEDULE_KEY) is not None:  # the group's own lr curve (group_schedule)
        opts[SCHEDULE_KEY] = parse_schedule(rule["name"], rule[SCHEDULE_KEY])
    return opts


def _module_prefixes(model: nn.Module, rule: Mapping[str, Any]) -> list[str]:
    names = dict(model.named_modules(remove_duplicate=False))  # a module under every name
    prefixes = []
    for module_name in rule.get("modules", []):
        if module_name not in names:
            raise ParamGroupError(
                f"parameter group {rule['name']!r}: unknown module {module_name!r}"
                f"{did_you_mean(module_name, names)}; modules that exist: {_module_listing(names)}"
            )
        prefixes.append(f"{module_name}." if module_name else "")
    return prefixes


def _module_listing(names: Iterable[str], max_depth: int = 2) -> list[str]:
    """Module names up to ``max_depth`` dots deep: all a user needs to pick a rule."""
    return [name for name in names if name and name.count(".") < max_depth]


def _first_rule(
    names: Sequence[str],
    rules: Sequence[Mapping[str, Any]],
    prefixes: Sequence[Sequence[str]],
    order: Sequence[int],
) -> int | None:
    """The index of the first rule, tried in ``order``, that matches any of a parameter's
    names, if any."""
    for index in order:
        if any(_matches(name, prefixes[index], rules[index]) for name in names):
            return index
    return None


def _matches(pname: str, prefixes: Sequence[str], rule: Mapping[str, Any]) -> bool:
    """Whether the name is in one of the rule's modules and/or matches one of its patterns
    (both, when the rule gives both)."""
    patterns = rule.get("params", [])
    in_module = any(pname.startswith(prefix) for prefix in prefixes)
    matched = any(fnmatch.fnmatchcase(pname, pattern) for pattern in patterns)
    if prefixes and patterns:
        return in_module and matched
    return in_module or matched


def group_name(group: Mapping[str, Any], index: int) -> str:
    """An optimizer group's ``name``, or ``pg<index>`` for an unnamed one."""
    return group.get("name", f"pg{index}")


def name_and_parents(group_name: str) -> list[str]:
    """A group's name and the names it is part of, most specific first:
    ``backbone.layer4.no_decay`` is part of ``backbone.layer4`` (a layer-decay part), which
    is part of ``backbone`` (the rule)."""
    parts = group_name.split(".")
    return [".".join(parts[:end]) for end in range(len(parts), 0, -1)]


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases and norm weights (any parameter of at most one dimension)."""
    return param.ndim <= 1 or name.endswith(".bias")


def _split(
    name: str,
    members: list[tuple[str, nn.Parameter]],
    options: Mapping[str, Any],
    no_decay_split: bool,
) -> list[dict[str, Any]]:
    """One or two groups (decay / no-decay halves) for a rule's parameters, none empty."""
    if not no_decay_split:
        halves = [(name, members, {})]
    else:
        halves = [
            (name, [m for m in members if not is_no_decay(*m)], {}),
            (name + NO_DECAY_SUFFIX, [m for m in members if is_no_decay(*m)], NO_DECAY_OPTIONS),
        ]
    return [
        {"name": group_name, "params": [p for _, p in params], **options, **override}
        for group_name, params, override in halves
        if params
    ]


def check_partition(model: nn.Module, groups: Sequence[Mapping[str, Any]]) -> None:
    """Raise ``ParamGroupError`` unless every trainable parameter of ``model`` is in exactly one
    group, checked by identity over every name of every parameter (a tied weight, reachable
    under two names, in two groups or in none is caught and named by all of its names)."""
    names = parameter_names(model)
    owner: dict[int, str] = {}
    for group in groups:
        for param in group["params"]:
            if id(param) in owner:
                raise ParamGroupError(
                    f"parameter {_aliases(names.get(id(param)))} is in two groups: "
                    f"{owner[id(param)]!r} and {group['name']!r}"
                )
            owner[id(param)] = group["name"]
    missing = [
        _aliases(aliases)
        for aliases, param in named_parameters_with_aliases(model)
        if param.requires_grad and id(param) not in owner
    ]
    if missing:
        raise ParamGroupError(f"trainable parameters in no group: {missing}")


def _aliases(names: Sequence[str] | None) -> str:
    if not names:
        return "(not a parameter of the model)"
    return names[0] + (f" (also {', '.join(names[1:])})" if len(names) > 1 else "")


def _examples(model: nn.Module, count: int = 5) -> list[str]:
    return [name for name, _ in model.named_parameters()][:count]


def describe(
    param_groups: Sequence[Mapping[str, Any]],
    defaults: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    names: Mapping[int, Sequence[str]] | None = None,
    optimizers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per optimizer group: name, tensors, parameters, lr, weight decay, momentum
    (where the optimizer has them) and every other optimizer option that differs from the
    defaults (not the keys a scheduler adds to a group, such as ``initial_lr``).

    ``defaults`` is one optimizer's defaults, or one mapping per group when each group has
    its own optimizer; ``optimizers`` adds an ``optimizer`` column (each group's class).
    An option a group's optimizer does not have is shown as ``-``.

    A tensor is counted once however many names it has. With ``names`` (``parameter_names``
    of the model) and a shared parameter in some group, a column ``tied`` lists each group's
    shared parameters by all of their names (``embed.weight = head.weight``)."""
    per_group = [defaults] * len(param_groups) if isinstance(defaults, Mapping) else defaults
    shown = ["lr", "weight_decay", "weight_decay_l1", "weight_decay_l2", "momentum", "betas"]
    shown = [key for key in shown if any(key in own for own in per_group)]
    hidden = {*shown, "name", "params", "param_names", SCHEDULE_KEY}
    shown += sorted(
        {
            key
            for group, own in zip(param_groups, per_group, strict=True)
            for key, value in group.items()
            # options only: not what a scheduler keeps in a group (initial_lr, max_lr, ...)
            if key in own and key not in hidden and value != own[key]
        }
    )
    rows = [
        {
            "name": group_name(group, index),
            **({"optimizer": optimizers[index]} if optimizers is not None else {}),
            "tensors": len(group["params"]),
            "parameters": sum(p.numel() for p in group["params"]),
            **{key: group.get(key, "-") for key in shown},
        }
        for index, group in enumerate(param_groups)
    ]
    schedules = schedule_column(param_groups, FOLLOWS_RUN)
    if schedules is not None:
        for row, cell in zip(rows, schedules, strict=True):
            row["schedule"] = cell
    names = names or {}
    tied = [
        ", ".join(
            " = ".join(names[id(p)]) for p in group["params"] if len(names.get(id(p), ())) > 1
        )
        for group in param_groups
    ]
    if any(tied):
        for row, cell in zip(rows, tied, strict=True):
            row["tied"] = cell
    return rows


def describe_optimizer(
    optimizer: Any, names: Mapping[int, Sequence[str]] | None = None
) -> list[dict[str, Any]]:
    """``describe`` of a built optimizer; with an optimizer per group (a
    ``CombinedOptimizer``) each group is compared with its own optimizer's defaults and the
    ``optimizer`` column names it. An optimizer with a ``describe_group(group)`` method
    (``Muon``: its Newton-Schulz dtype) gets that column too, its text in brackets after
    the class name: ``Muon (ns float32)``."""
    children = getattr(optimizer, "group_optimizers", None)
    if children is None:
        labels = None
        if hasattr(optimizer, "describe_group"):
            labels = [optimizer_label(optimizer, group) for group in optimizer.param_groups]
        return describe(optimizer.param_groups, optimizer.defaults, names, labels)
    return describe(
        optimizer.param_groups,
        [child.defaults for child in children],
        names,
        [
            optimizer_label(child, group)
            for child, group in zip(children, optimizer.param_groups, strict=True)
        ],
    )


def optimizer_label(optimizer: Any, group: Mapping[str, Any]) -> str:
    """The class name of ``optimizer``, with what its ``describe_group(group)`` says (if it
    has that method) in brackets."""
    describe_group = getattr(optimizer, "describe_group", None)
    note = f" ({describe_group(group)})" if describe_group is not None else ""
    return type(optimizer).__name__ + note


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of equal keys as a fixed-width text table."""
    if not rows:
        return "(no groups)"
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [columns, ["-" * w for w in widths], *cells]
    padded = ("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)) for line in lines)
    return "\n".join(line.rstrip() for line in padded)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)

"""Several optimizers, one per parameter group, as the one optimizer Lightning steps.

What Lightning and torch lack: automatic optimization takes exactly one optimizer (two
raise "Training with multiple optimizers is only supported with manual optimization",
and in manual mode Lightning no longer steps the schedulers), and a torch optimizer
applies one update rule to all its groups. ``CombinedOptimizer`` is a
``torch.optim.Optimizer`` whose ``param_groups`` is the list of its children's group dicts
(the same dict objects, in the order given), so everything that reads or writes
``param_groups`` works unchanged on every group: torch's schedulers, Lightning's
``LearningRateMonitor``, gradient clipping, ``torch.amp.GradScaler`` (unscaling, skipping
a step with inf gradients), ``GroupStats``, ``FreezeGroups`` and ``FiniteLossGuard``.

- ``step(closure)`` evaluates the closure once, then steps every child without one
  (so closure optimizers that re-evaluate the loss, ``torch.optim.LBFGS``, are refused).
- ``zero_grad`` zeroes every child's gradients.
- ``state_dict()`` is in torch's format over all groups (``state`` keyed by the index of
  each parameter in the combined group order, ``param_groups`` in that order, each with
  its options), plus ``optimizers``: each group's optimizer class
  (``module.QualName``). ``load_state_dict`` gives each child exactly its own part
  back, and refuses a state whose group count or per-group optimizer classes differ
  (naming the group and both classes).
- ``add_param_group(group)`` gives the group to a new child made by ``default`` (or,
  without one, to the first child).
- ``state`` behaves as torch's ``defaultdict(dict)`` over every group's parameters, and
  each read or write goes to the child that owns the parameter (``CombinedState``): a
  parameter without state reads as ``{}``, and ``state[p][key] = value``,
  ``state[p] = {...}`` and ``del state[p]`` change that child's state, so what they write
  is saved with it.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any

import torch
from torch.optim import Optimizer

OptimizerFactory = Callable[[Iterable[Any]], Optimizer]


def class_path(optimizer: Optimizer | type) -> str:
    """``module.QualName`` of an optimizer or optimizer class."""
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    return f"{cls.__module__}.{cls.__qualname__}"


class CombinedOptimizer(Optimizer):
    """One optimizer made of child optimizers, each stepping its own parameter groups.

    Args:
        optimizers: the children; no parameter may be in two of them.
        order: the children's group dicts in the order ``param_groups`` lists them (each
            exactly once); ``None`` for child by child.
        default: builds the optimizer of a group added with ``add_param_group``, e.g. the
            model's default optimizer class; ``None`` adds such groups to the first child.
        name: the name ``LearningRateMonitor`` uses in its tags (``lr-<name>/<group>``);
            ``None`` for the class name of ``default`` (or of the first child).
    """

    def __init__(
        self,
        optimizers: Sequence[Optimizer],
        order: Sequence[dict[str, Any]] | None = None,
        default: OptimizerFactory | None = None,
        name: str | None = None,
    ) -> None:
        self.optimizers = list(optimizers)
        if not self.optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        for child in self.optimizers:
            if not isinstance(child, Optimizer) or isinstance(child, CombinedOptimizer):
                raise TypeError(f"CombinedOptimizer takes torch optimizers, got {type(child)}")
            if isinstance(child, torch.optim.LBFGS):
                raise TypeError(
                    "LBFGS evaluates the loss several times per step, so it cannot share a step "
                    "with other optimizers; train with LBFGS alone"
                )
        self._check_disjoint()
        self.default = default
        model = self.optimizers[0]
        if default is not None:
            model = default([torch.zeros(2, 2, requires_grad=True)])
        self.name = name or type(model).__name__
        # What Optimizer.__init__ sets, without building groups of its own (they are the
        # children's); _patch_step_function wraps step with the profiler and step hooks.
        self.defaults = dict(model.defaults)  # what a group added later gets
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True
        self.param_groups: list[dict[str, Any]] = []
        self.state = CombinedState(self.optimizers)
        # (child index, group index in the child) of each combined group
        self._owners: list[tuple[int, int]] = []
        self._set_order(order)

    def __getstate__(self) -> dict[str, Any]:
        """Everything, for copy and pickle: torch's keeps only ``defaults``, ``state`` and
        ``param_groups``, which would lose the children (its ``__setstate__`` restores the
        rest and wraps ``step`` again)."""
        return dict(self.__dict__)

    def _check_disjoint(self) -> None:
        owner: dict[int, int] = {}
        for index, child in enumerate(self.optimizers):
            for group in child.param_groups:
                for param in group["params"]:
                    first = owner.setdefault(id(param), index)
                    if first != index:
                        raise ValueError(
                            f"a parameter of shape {tuple(param.shape)} is in optimizers "
                            f"#{first} ({type(self.optimizers[first]).__name__}) and #{index} "
                            f"({type(child).__name__})"
                        )

    def _set_order(self, order: Sequence[dict[str, Any]] | None) -> None:
        where = {
            id(group): (c, g)
            for c, child in enumerate(self.optimizers)
            for g, group in enumerate(child.param_groups)
        }
        if order is None:
            owners = list(where.values())
        else:
            owners = []
            for group in order:
                if id(group) not in where:
                    raise ValueError(
                        f"order: group {group.get('name', '?')!r} is no group of the optimizers"
                    )
                owners.append(where[id(group)])
            if sorted(owners) != sorted(where.values()):
                raise ValueError("order must list every group of the optimizers exactly once")
        self._owners = owners
        self._refresh()

    def _refresh(self) -> None:
        """Point ``param_groups`` at the children's current group dicts (a child's
        ``load_state_dict`` replaces them); the list object itself is kept, since
        Lightning's ``LightningOptimizer`` holds a reference to it."""
        self.param_groups[:] = [self.optimizers[c].param_groups[g] for c, g in self._owners]

    def optimizer_of(self, index: int) -> Optimizer:
        """The child that steps ``param_groups[index]``."""
        return self.optimizers[self._owners[index][0]]

    @property
    def group_optimizers(self) -> list[Optimizer]:
        """The child of each group, in ``param_groups`` order."""
        return [self.optimizers[c] for c, _ in self._owners]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Evaluate ``closure`` (if given) once, then step every child."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for child in self.optimizers:
            child.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for child in self.optimizers:
            child.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group, stepped by a new child made by ``default`` (else by the first
        child); it comes last in ``param_groups``."""
        known = {id(p) for group in self.param_groups for p in group["params"]}
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if any(id(p) in known for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        param_group = {**param_group, "params": params}
        if self.default is not None:
            self.optimizers.append(self.default([param_group]))
            self._owners.append((len(self.optimizers) - 1, 0))
        else:
            self.optimizers[0].add_param_group(param_group)
            self._owners.append((0, len(self.optimizers[0].param_groups) - 1))
        self._refresh()

    def _global_index(self) -> dict[int, int]:
        """id(param) -> its index in the combined state dict (torch's packing order)."""
        index: dict[int, int] = {}
        for group in self.param_groups:
            for param in group["params"]:
                index.setdefault(id(param), len(index))
        return index

    def state_dict(self) -> dict[str, Any]:
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        index = self._global_index()
        groups: list[dict[str, Any] | None] = [None] * len(self.param_groups)
        state: dict[int, Any] = {}
        position = {owner: i for i, owner in enumerate(self._owners)}
        for c, child in enumerate(self.optimizers):
            saved = child.state_dict()
            local = _packing_order(child)
            for key, value in saved["state"].items():
                state[index[id(local[key])]] = value
            for g, (group, packed) in enumerate(
                zip(child.param_groups, saved["param_groups"], strict=True)
            ):
                groups[position[(c, g)]] = {
                    **packed,
                    "params": [index[id(p)] for p in group["params"]],
                }
        state_dict = {
            "state": dict(sorted(state.items())),
            "param_groups": groups,
            "optimizers": [class_path(child) for child in self.group_optimizers],
        }
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        self.check_state_dict(state_dict)
        index = self._global_index()
        saved_groups = state_dict["param_groups"]
        position = {owner: i for i, owner in enumerate(self._owners)}
        for c, child in enumerate(self.optimizers):
            local = _packing_order(child)
            local_of = {id(p): i for i, p in local.items()}
            global_to_local = {index[id(p)]: i for i, p in local.items()}
            child_groups = []
            for g, group in enumerate(child.param_groups):
                saved = saved_groups[position[(c, g)]]
                child_groups.append({**saved, "params": [local_of[id(p)] for p in group["params"]]})
            child_state = {
                global_to_local[key]: value
                for key, value in state_dict["state"].items()
                if key in global_to_local
            }
            child.load_state_dict({"state": child_state, "param_groups": child_groups})
        self._refresh()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def check_state_dict(self, state_dict: dict[str, Any]) -> None:
        """``ValueError`` unless ``state_dict`` has this optimizer's number of groups and,
        for each group, the same optimizer class."""
        saved_groups = state_dict["param_groups"]
        names = [group.get("name", f"pg{i}") for i, group in enumerate(self.param_groups)]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the saved optimizer state has {len(saved_groups)} parameter groups, this "
                f"optimizer {len(self.param_groups)} ({names})"
            )
        saved_classes = state_dict.get("optimizers")
        if saved_classes is None:
            raise ValueError(
                "the saved optimizer state is of a single optimizer for all groups; this one "
                f"has an optimizer per group ({self.describe_classes()})"
            )
        changed = [
            f"group {name!r}: {saved} when saved, {class_path(child)} now"
            for name, saved, child in zip(names, saved_classes, self.group_optimizers, strict=True)
            if saved != class_path(child)
        ]
        if changed:
            raise ValueError("a group's optimizer class changed: " + "; ".join(changed))

    def describe_classes(self) -> str:
        return ", ".join(
            f"{group.get('name', f'pg{i}')}: {type(child).__name__}"
            for i, (group, child) in enumerate(
                zip(self.param_groups, self.group_optimizers, strict=True)
            )
        )


class CombinedState(MutableMapping):
    """The children's ``state`` as one mapping, as torch's ``Optimizer.state`` is one
    ``defaultdict(dict)``: what torch lacks is a ``state`` shared by several optimizers.

    A key is looked up in the child whose groups hold it (a missing parameter gets the
    child's own empty entry, as its ``defaultdict`` makes one); a key that is no
    parameter of any child keeps its entry here, and is not saved.
    """

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        self._optimizers = optimizers  # the CombinedOptimizer's list: later children too
        self._others: defaultdict[Any, Any] = defaultdict(dict)

    def _state_of(self, key: Any) -> MutableMapping:
        """The state mapping that holds ``key``: its owner's, else this one's own."""
        for child in self._optimizers:
            if key in child.state or any(
                key is param for group in child.param_groups for param in group["params"]
            ):
                return child.state
        return self._others

    def __getitem__(self, key: Any) -> Any:
        return self._state_of(key)[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state_of(key)[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._state_of(key)[key]

    def __iter__(self) -> Iterator[Any]:
        for child in self._optimizers:
            yield from child.state
        yield from self._others

    def __len__(self) -> int:
        return sum(len(child.state) for child in self._optimizers) + len(self._others)

    def __contains__(self, key: object) -> bool:
        return any(key in child.state for child in self._optimizers) or key in self._others

    def __repr__(self) -> str:
        return f"CombinedState({dict(self)!r})"


def _packing_order(optimizer: Optimizer) -> dict[int, torch.Tensor]:
    """The index each parameter gets in ``optimizer.state_dict()`` (torch numbers them in
    group order, a repeated parameter keeping its first index)."""
    order: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    index = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            if id(param) not in seen:
                order[index] = param
                seen.add(id(param))
            index += 1
    return order

"""Does a checkpoint fit the model and parameter groups of this run? Clear errors if not.

What PyTorch and Lightning lack: a checkpoint from another net fails with a long list of
``size mismatch for ...`` lines, and an optimizer state from another group layout either
fails with "a parameter group that doesn't match the size" or, when the sizes happen to
agree, loads silently, handing momentum buffers to the wrong tensors and overwriting the
configured groups' names and learning rates. These checks name what differs instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from groupwise.checkpoint.io import CheckpointError

LAYOUT_KEY = "param_group_layout"
WEIGHTS_ONLY_HINT = (
    "To start a new run from its weights only (fresh optimizer and schedule), use "
    "--model.init_weights CHECKPOINT instead of --ckpt_path."
)


def group_layout(model: nn.Module, groups: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Each group's name -> the names of its parameters (relative to ``model``)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    # Groups added by other code (Lightning's BaseFinetuning) may have no name.
    return {
        g.get("name", f"pg{i}"): [name_of[id(p)] for p in g["params"]] for i, g in enumerate(groups)
    }


def check_group_layout(
    saved: Mapping[str, Sequence[str]], current: Mapping[str, Sequence[str]], source: str
) -> None:
    """Raise ``CheckpointError`` unless both layouts have the same groups, in the same order,
    with the same parameters."""
    if {k: list(v) for k, v in saved.items()} == {k: list(v) for k, v in current.items()} and (
        list(saved) == list(current)
    ):
        return
    lines = [
        f"the parameter groups of {source} differ from the ones this config builds:",
        f"  checkpoint: {_summary(saved)}",
        f"  config:     {_summary(current)}",
    ]
    added, removed = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if added:
        lines.append(f"  groups added: {added}")
    if removed:
        lines.append(f"  groups removed: {removed}")
    owner_saved = {p: g for g, ps in saved.items() for p in ps}
    owner_now = {p: g for g, ps in current.items() for p in ps}
    moved = [
        f"{p}: {owner_saved[p]} -> {group}"
        for p, group in owner_now.items()
        if p in owner_saved and owner_saved[p] != group
    ]
    if moved:
        lines.append(f"  parameters re-assigned: {moved[:5]}{' ...' if len(moved) > 5 else ''}")
    if not (added or removed or moved):
        lines.append(f"  groups in another order: {list(saved)} vs {list(current)}")
    lines.append(WEIGHTS_ONLY_HINT)
    raise CheckpointError("\n".join(lines))


def _summary(layout: Mapping[str, Sequence[str]]) -> str:
    return ", ".join(f"{name} ({len(params)} tensors)" for name, params in layout.items())


def saved_layout(checkpoint: Mapping[str, Any]) -> dict[str, list[str]] | None:
    """The layout a checkpoint recorded, or ``None`` if it recorded none."""
    layout = checkpoint.get(LAYOUT_KEY)
    return dict(layout) if layout is not None else None


def check_state_dict(
    saved: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise ``CheckpointError`` naming missing, unexpected and differently shaped weights."""
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    reshaped = [
        f"{k}: {tuple(saved[k].shape)} in the checkpoint, {tuple(current[k].shape)} here"
        for k in current
        if k in saved and saved[k].shape != current[k].shape
    ]
    if not (missing or unexpected or reshaped):
        return
    lines = [f"{source} holds weights for a different net:"]
    for label, items in (
        ("missing from the checkpoint", missing),
        ("unexpected in the checkpoint", unexpected),
        ("different shapes", reshaped),
    ):
        if items:
            more = f" ... ({len(items)} in all)" if len(items) > 5 else ""
            lines.append(f"  {label}: {items[:5]}{more}")
    lines.append("Use the model config the checkpoint was trained with (see its hparams).")
    raise CheckpointError("\n".join(lines))


OPTIMIZERS_KEY = "param_group_optimizers"


def optimizer_classes(optimizer: Any) -> dict[str, str]:
    """Each group's name -> the class (``module.QualName``) of the optimizer that steps it:
    the optimizer's own, or with an optimizer per group (``CombinedOptimizer``) the
    group's."""
    children = getattr(optimizer, "group_optimizers", None) or [optimizer] * len(
        optimizer.param_groups
    )
    return {
        group.get("name", f"pg{i}"): f"{type(child).__module__}.{type(child).__qualname__}"
        for i, (group, child) in enumerate(zip(optimizer.param_groups, children, strict=True))
    }


def check_optimizer_classes(
    saved: Mapping[str, str], current: Mapping[str, str], source: str
) -> None:
    """Raise ``CheckpointError`` naming each group whose optimizer class differs."""
    changed = [
        f"  {name}: {saved[name]} in the checkpoint, {cls} in the config"
        for name, cls in current.items()
        if name in saved and saved[name] != cls
    ]
    if changed:
        raise CheckpointError(
            "\n".join(
                [f"the optimizer of some parameter groups differs from {source}:", *changed]
                + [WEIGHTS_ONLY_HINT]
            )
        )

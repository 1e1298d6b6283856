"""Does a checkpoint fit the model and parameter groups of this run? Clear errors if not.

What PyTorch and Lightning lack: a checkpoint from another net fails with a long list of
``size mismatch for ...`` lines, and an optimizer state from another group layout either
fails with "a parameter group that doesn't match the size" or, when the sizes happen to
agree, loads silently, handing momentum buffers to the wrong tensors and overwriting the
configured groups' names and learning rates. These checks name what differs instead.
"""

from __future__ import annotations

from collections import Counter
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


# ---- the optimizer's and scheduler's settings ----------------------------------------------

SETTINGS_KEY = "optimizer_settings"
# Scheduler state that is progress, not configuration (torch's LRScheduler and
# ReduceLROnPlateau); keys starting with "_" are torch's internals and skipped too, except
# SequentialLR's / ChainedScheduler's children and milestones.
_PROGRESS = {"last_epoch", "verbose", "best", "num_bad_epochs", "cooldown_counter"}
_CHILDREN = {"_schedulers": "schedulers", "_milestones": "milestones"}
_ABSENT = "(not set)"


def qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def plain(value: Any) -> Any:
    """``value`` as plain data that compares by value and loads with ``weights_only``:
    tensors as numbers or lists, tuples as lists, a ``Counter`` (MultiStepLR's milestones)
    as its sorted elements."""
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Counter):
        return sorted(value.elements())
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def group_options(optimizer: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    """Each group's name -> its options (lr, weight decay, momentum, betas, ...), read right
    after the optimizer is built, before a scheduler changes or adds any."""
    return {
        g.get("name", f"pg{i}"): {k: plain(v) for k, v in g.items() if k not in ("params", "name")}
        for i, g in enumerate(optimizer.param_groups)
    }


def scheduler_arguments(
    scheduler: Any, options: Mapping[str, Mapping[str, Any]], from_trainer: Sequence[str] = ()
) -> dict[str, Any]:
    """A built scheduler's class and arguments, from its ``state_dict`` without its progress:
    ``{"class": ..., "args": {...}, "group_options": {...}, "from_trainer": [...]}``.

    ``options`` are the groups' options before the scheduler was built: the group options the
    scheduler itself adds (``OneCycleLR``'s ``max_lr``, ``CyclicLR``'s momenta) count as its
    arguments; ``base_lrs`` only where they are not just the groups' lrs. ``from_trainer``
    names the arguments the run filled in from the trainer (a length)."""
    state = scheduler.state_dict()
    # the groups the scheduler acts on (some of them, where others have their own schedule)
    lrs = [options[name]["lr"] for name in group_options(scheduler.optimizer)]
    args = {}
    for key, value in state.items():
        if key == "base_lrs" and plain(value) == lrs:
            continue
        if key in _PROGRESS or (key.startswith("_") and key not in _CHILDREN):
            continue
        args[_CHILDREN.get(key, key)] = value
    if "schedulers" in args:  # SequentialLR / ChainedScheduler: each child's arguments
        args["schedulers"] = [
            {k: v for k, v in child.items() if k not in _PROGRESS and not k.startswith("_")}
            for child in args["schedulers"]
        ]
    added = {
        name: {k: v for k, v in group.items() if k not in options[name] and k != "initial_lr"}
        for name, group in group_options(scheduler.optimizer).items()
    }
    return {
        "class": qualified_name(type(scheduler)),
        "args": plain(args),
        "group_options": {name: opts for name, opts in added.items() if opts},
        "from_trainer": sorted(from_trainer),
    }


def optimizer_settings(
    optimizer: torch.optim.Optimizer,
    options: Mapping[str, Mapping[str, Any]],
    scheduler: dict[str, Any] | None,
    training: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What a checkpoint records to check a resume against: the optimizer's class, each
    group's options as built (``group_options``), the scheduler (``scheduler_arguments``,
    or ``None``) and the settings that decide when it and the optimizer step
    (``training_settings``)."""
    return {
        "optimizer": qualified_name(type(optimizer)),
        "groups": {name: dict(opts) for name, opts in options.items()},
        "scheduler": scheduler,
        "training": dict(training or {}),
    }


def training_settings(
    trainer: Any, scheduler_interval: str | None, loss: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The settings outside the optimizer and scheduler that decide each group's lr and
    update at a step, by their config keys: the scheduler's interval (``None`` without a
    scheduler, where it decides nothing), the gradient accumulation, the gradient clipping
    (``None`` for none: a clip value of 0 clips nothing, and the algorithm matters only
    with a value), the training batches per epoch (which an epoch's lr steps count) and
    ``loss``: the module's loss options by key (``model.loss_reduction``: a summed loss's
    gradient is the mean's times the batch size; ``model.label_smoothing``)."""
    clip = trainer.gradient_clip_val or None
    return {
        **(loss or {}),
        "model.scheduler_interval": scheduler_interval,
        "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
        "trainer.gradient_clip_val": clip,
        "trainer.gradient_clip_algorithm": (trainer.gradient_clip_algorithm or "norm")
        if clip
        else None,
        "trainer.limit_train_batches": trainer.limit_train_batches,
    }


def _training_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``settings_differences``'s lines for the training settings; none against a checkpoint
    that recorded none (it predates them)."""
    old, new = saved.get("training"), current.get("training") or {}
    if not old:
        return []
    lines = []
    for key in [*new, *(k for k in old if k not in new)]:
        if key not in old:
            continue  # a setting the checkpoint predates (the loss options, before 2026-12)
        config, checkpoint = new.get(key, _ABSENT), old.get(key, _ABSENT)
        if key in _ONLY_WHERE_SET and None in (config, checkpoint):
            continue  # no scheduler, or no clipping, on one side: named by its own line
        if config != checkpoint:
            lines.append(f"{key}: config {_show(config)}, checkpoint {_show(checkpoint)}")
    return lines


# training settings that decide nothing where they are None (no scheduler, no clipping)
_ONLY_WHERE_SET = {"model.scheduler_interval", "trainer.gradient_clip_algorithm"}


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """One line per difference: what, the config's value, the checkpoint's value."""
    lines = _training_differences(saved, current)

    def differ(what: str, config: Any, checkpoint: Any) -> None:
        if config != checkpoint:
            lines.append(f"{what}: config {_show(config)}, checkpoint {_show(checkpoint)}")

    same_optimizer = saved["optimizer"] == current["optimizer"]
    differ("optimizer", current["optimizer"], saved["optimizer"])
    for name, options in current["groups"].items():
        saved_options = saved["groups"].get(name, {})
        keys = [*options, *(k for k in saved_options if k not in options)]
        for key in keys:
            # another optimizer class has other options: compare only the ones both have
            if same_optimizer or (key in options and key in saved_options):
                differ(
                    f"group {name}: {key}",
                    options.get(key, _ABSENT),
                    saved_options.get(key, _ABSENT),
                )
    old, new = saved["scheduler"], current["scheduler"]
    if old is None or new is None or old["class"] != new["class"]:
        differ("scheduler", new and new["class"], old and old["class"])
        return lines
    label = f"scheduler {new['class'].rsplit('.', 1)[-1]}"
    for key in [*new["args"], *(k for k in old["args"] if k not in new["args"])]:
        config, checkpoint = new["args"].get(key, _ABSENT), old["args"].get(key, _ABSENT)
        if config != checkpoint:
            config_text = _show(config) + (
                " (from the trainer)" if key in new["from_trainer"] else ""
            )
            lines.append(f"{label}: {key}: config {config_text}, checkpoint {_show(checkpoint)}")
    for name, options in new["group_options"].items():
        for key, value in options.items():
            differ(
                f"{label}: group {name}: {key}",
                value,
                old["group_options"].get(name, {}).get(key, _ABSENT),
            )
    return lines


def length_change(saved: Mapping[str, Any], current: Mapping[str, Any]) -> tuple | None:
    """``(argument, checkpoint's value, config's value)`` when the scheduler is of the same
    class and an argument the config's run filled from the trainer (a length) differs."""
    old, new = saved["scheduler"], current["scheduler"]
    if old is None or new is None or old["class"] != new["class"]:
        return None
    for name in new["from_trainer"]:
        if old["args"].get(name) != new["args"].get(name):
            return name, old["args"].get(name), new["args"][name]
    return None


def check_optimizer_settings(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    source: str,
    path: str,
    extend_hint: bool = False,
    ended: str = "",
) -> None:
    """Raise ``CheckpointError`` listing every difference between the optimizer and scheduler
    settings a checkpoint was trained with and those of this config, with the ways forward
    (``extend_hint``: also ``--model.extend_schedule``, where it can stretch the schedule;
    ``ended``, e.g. ``"step 3 of 3"``: the saved schedule has ended, so only a new run)."""
    lines = settings_differences(saved, current)
    if not lines:
        return
    training = bool(_training_differences(saved, current))
    what = "optimizer, scheduler or training" if training else "optimizer or scheduler"
    why = (
        "A resume would go on under these settings from the checkpoint's state: the run "
        "would not be the one that was saved. Either"
        if training
        else "A resume loads the checkpoint's optimizer and scheduler states, which would "
        "silently replace these settings. Either"
    )
    new_run = (
        "  - start a new run from its weights with these settings: "
        f"--model.init_weights {path} instead of --ckpt_path"
    )
    ways = [new_run + ", or", EXTEND_HINT] if extend_hint else [new_run + "."]
    resume = (
        "  - resume the run exactly as it was saved: drop these changes (the run's "
        "config.yaml holds its settings), or"
    )
    if ended:
        why = (
            f"Its schedule has ended ({ended}): resumed as it was saved it trains no further,"
            " and there is nothing left to stretch. To train on:"
        )
        resume, ways = "", [new_run + "."]
    header = f"{source} was trained with other {what} settings than this config has:"
    body = [header, *(f"  {line}" for line in lines), why, resume, *ways]
    raise CheckpointError("\n".join(line for line in body if line))


EXTEND_HINT = (
    "  - continue this run over the new length, the rest of its schedule stretched to end "
    "there: --model.extend_schedule true."
)


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


# ---- the optimizer class of each group ---------------------------------------------------

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

"""Which ``last.ckpt`` ``--ckpt_path last`` resumes when several runs share a directory.

Lightning's own ``"last"`` looks only in the new run's (empty) version directory, and the
newest ``last.ckpt`` of any run in the directory may be another experiment's. Here "last"
is the most recently written ``last.ckpt`` of an earlier run of *this* config: the same
model and data settings (the hyper-parameters LightningCLI saves in every checkpoint) and
the same seed (saved by the DataModule). Settings of how the data is read and the net is
run (``RUN_SETTINGS``) and everything of the trainer (epochs, devices, logging) may differ:
those are what a resume may change, and whatever the checkpoint must agree with is
checked again when it is loaded. Checkpoints of other configs are passed over, each
named with what differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from groupwise.checkpoint.io import load_checkpoint_file

# Settings that say where the data is and how it is read or the net is run, not what is
# trained: a resume may change them (e.g. the data copied to a node's local disk).
RUN_SETTINGS = {
    "model": ("compile", "channels_last", "extend_schedule"),
    "data": ("data_dir", "download", "num_workers", "cache"),
}


@dataclass(frozen=True)
class RunConfig:
    """What makes a run this run: the model's and the DataModule's hyper-parameters (as
    LightningCLI saves them in checkpoints) and the seed its data order is keyed by."""

    model: Mapping[str, Any]
    data: Mapping[str, Any]
    seed: int | None

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, without RUN_SETTINGS and private (``_``) keys."""
        flat = {"seed_everything": self.seed}
        for section, values in (("model", self.model), ("data", self.data)):
            for key, value in _flatten(values, section).items():
                head = key.split(".")[1]
                if not head.startswith("_") and head not in RUN_SETTINGS[section]:
                    flat[key] = value
        return flat


def saved_run_config(checkpoint: Mapping[str, Any], datamodule_key: str) -> RunConfig | None:
    """The run config a checkpoint was saved with; None if it holds none (not saved by
    the ``groupwise`` command)."""
    model = checkpoint.get("hyper_parameters")
    data = checkpoint.get("datamodule_hyper_parameters")
    if not isinstance(model, Mapping) or not isinstance(data, Mapping):
        return None
    seed = checkpoint.get(datamodule_key, {}).get("seed")
    return RunConfig(model, data, seed)


def differences(saved: RunConfig, current: RunConfig) -> list[str]:
    """``key: <saved> there, <current> here`` for each setting that differs (a seed the
    checkpoint does not record is not compared)."""
    there, here = saved.flat(), current.flat()
    if saved.seed is None:
        there["seed_everything"] = here["seed_everything"]
    return [
        f"{key}: {there.get(key, '(unset)')!r} there, {here.get(key, '(unset)')!r} here"
        for key in sorted(set(there) | set(here))
        if there.get(key, _MISSING) != here.get(key, _MISSING)
    ]


@dataclass(frozen=True)
class Pick:
    """The result of :func:`pick_last`: the checkpoint to resume (None: start afresh) and
    the newer ones passed over, each with why."""

    path: Path | None
    passed_over: list[tuple[Path, list[str]]]

    def report(self, where: Path, fit: bool = True) -> str:
        """What was taken and passed over; ``fit``: a fit with nothing to resume starts a
        new run (the other subcommands have nothing to evaluate)."""
        if self.path is not None:
            head = f"Resuming from {self.path}: the newest last.ckpt of this config under {where}"
        else:
            found = "no earlier run of this config" if self.passed_over else "no last.ckpt"
            head = f"--ckpt_path last: {found} under {where}" + (
                ": starting a new run." if fit else "."
            )
            if self.passed_over:
                head += " To use one of the runs below anyway, give its file: --ckpt_path FILE."
        lines = [head]
        for path, why in self.passed_over:
            shown = "; ".join(why[:4]) + ("; ..." if len(why) > 4 else "")
            lines.append(f"  not {path}: another config ({shown})")
        return "\n".join(lines)


def pick_last(candidates: Iterable[Path], current: RunConfig, datamodule_key: str) -> Pick:
    """The most recently written of ``candidates`` whose saved run config is ``current``."""
    passed_over = []
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        saved = saved_run_config(_header(path), datamodule_key)
        why = ["it records no config"] if saved is None else differences(saved, current)
        if not why:
            return Pick(path, passed_over)
        passed_over.append((path, why))
    return Pick(None, passed_over)


def _header(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, memory-mapped: its tensors are not read."""
    return load_checkpoint_file(path, mmap=True)


_MISSING = object()


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}"))
        return flat
    if isinstance(value, tuple):
        value = list(value)
    return {prefix: value}

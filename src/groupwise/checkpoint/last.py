"""Which ``last.ckpt`` ``--ckpt_path last`` resumes when several runs share a directory.

Lightning's own ``"last"`` looks only in the new run's (empty) version directory, and the
newest ``last.ckpt`` of any run in the directory may be another experiment's. Here "last"
is the most recently written ``last.ckpt`` of an earlier run of *this* config: the same
model and data settings (the hyper-parameters LightningCLI saves in every checkpoint) and
the same seed (saved by the DataModule). Settings of how the data is read and the net is
run (``RUN_SETTINGS``) and everything of the trainer (epochs, devices, logging) may differ:
those are what a resume may change, and whatever the checkpoint must agree with is
checked again when it is loaded. Checkpoints of other configs are passed over, each
named with what differs, and so is a file that cannot be read (not a checkpoint, cut
short, or holding objects the safe loader refuses), named with why.

Where no run is of this config, but the newest run of the same ``--config`` file(s)
(recorded in every checkpoint by :class:`RecordConfigFiles`: Lightning saves the
hyper-parameters, not the files they came from) differs only in settings, ``fit`` stops
with each difference and the ways on (:func:`settings_changed_message`), as an explicit
``--ckpt_path`` of it does: the user asked to resume that run. A new run starts only where
no run of these config files is there. A cut-short file may be this config's own run, so
with nothing of this config to resume it stops the command too.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback

from groupwise.checkpoint.io import CheckpointError, load_checkpoint_file

# Settings that say where the data is and how it is read or the net is run, not what is
# trained: a resume may change them (e.g. the data copied to a node's local disk).
RUN_SETTINGS = {
    "model": ("compile", "channels_last", "extend_schedule"),
    "data": ("data_dir", "download", "num_workers", "cache"),
}


CONFIG_FILES_KEY = "config_files"


class RecordConfigFiles(Callback):
    """Write the run's ``--config`` files (absolute paths, in order) into every checkpoint,
    key ``config_files``: what tells a run of the same config files with other settings from
    a run of another config."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = list(files)

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CONFIG_FILES_KEY] = self.files


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


def changed_settings(saved: RunConfig, current: RunConfig) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, current value)`` for each setting that differs (a seed the
    checkpoint does not record is not compared; ``(unset)`` where one side has none)."""
    there, here = saved.flat(), current.flat()
    if saved.seed is None:
        there["seed_everything"] = here["seed_everything"]
    return [
        (key, there.get(key, "(unset)"), here.get(key, "(unset)"))
        for key in sorted(set(there) | set(here))
        if there.get(key, _MISSING) != here.get(key, _MISSING)
    ]


def differences(saved: RunConfig, current: RunConfig) -> list[str]:
    """``key: <saved> there, <current> here`` for each setting that differs."""
    return [
        f"{key}: {there!r} there, {here!r} here"
        for key, there, here in changed_settings(saved, current)
    ]


@dataclass(frozen=True)
class Pick:
    """The result of :func:`pick_last`: the checkpoint to resume (None: none of this
    config) and the newer ones passed over, each with why (``another config (...)``,
    ``not readable (...)``); where none is of this config, the newest run of the same
    config files with what differs (``changed``) and the files that could not be read and
    may be this config's (``damaged``, with their errors)."""

    path: Path | None
    passed_over: list[tuple[Path, str]]
    changed: tuple[Path, list[tuple[str, Any, Any]]] | None = None
    damaged: list[tuple[Path, CheckpointError]] = field(default_factory=list)

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
        lines += [f"  not {path}: {why}" for path, why in self.passed_over]
        return "\n".join(lines)


def pick_last(
    candidates: Iterable[Path],
    current: RunConfig,
    datamodule_key: str,
    config_files: Sequence[str] = (),
) -> Pick:
    """The most recently written of ``candidates`` whose saved run config is ``current``;
    ``config_files``: this run's ``--config`` files, to find a run of the same files."""
    passed_over: list[tuple[Path, str]] = []
    changed, damaged = None, []
    for path in sorted(candidates, key=lambda p: p.stat().st_mtime_ns, reverse=True):
        try:
            header = _header(path)
        except CheckpointError as error:
            passed_over.append((path, f"not readable ({_reason(error)})"))
            if not _whole(error):
                damaged.append((path, error))
            continue
        saved = saved_run_config(header, datamodule_key)
        if saved is None:
            passed_over.append((path, "another config (it records no config)"))
            continue
        why = changed_settings(saved, current)
        if not why:
            return Pick(path, passed_over)
        shown = differences(saved, current)
        shown_text = "; ".join(shown[:4]) + ("; ..." if len(shown) > 4 else "")
        passed_over.append((path, f"another config ({shown_text})"))
        same_files = header.get(CONFIG_FILES_KEY) == list(config_files)
        if changed is None and same_files:
            changed = (path, why)
    return Pick(None, passed_over, changed, damaged)


def settings_changed_message(path: Path, where: Path, why: list[tuple[str, Any, Any]]) -> str:
    """What ``--ckpt_path last`` says when the newest run of this config's files has other
    settings: each difference and the ways on, as for an explicit ``--ckpt_path``."""
    return "\n".join(
        [
            f"--ckpt_path last: checkpoint {path}, the newest run of this config file under "
            f"{where}, was trained with other settings than this config has:",
            *(
                f"  {key}: config {_show(here)}, checkpoint {_show(there)}"
                for key, there, here in why
            ),
            "A resume loads the checkpoint's optimizer and scheduler states, which would "
            "silently replace these settings. Either",
            "  - resume the run exactly as it was saved: drop these changes (the run's "
            "config.yaml holds its settings), or",
            f"  - start a new run from its weights with these settings: --model.init_weights "
            f"{path} instead of --ckpt_path, or",
            "  - start a new run from scratch: drop --ckpt_path last.",
        ]
    )


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def _header(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, memory-mapped: its tensors are not read."""
    return load_checkpoint_file(path, mmap=True)


def _reason(error: CheckpointError) -> str:
    """The part of ``load_checkpoint_file``'s message that says what is wrong."""
    text = str(error)
    start, end = text.find(" ("), text.rfind("). ")
    return text[start + 2 : end] if 0 <= start < end else text


def _whole(error: CheckpointError) -> bool:
    """Whether the file was read whole and is something else than a ``groupwise`` run: the
    safe loader refused an object in it (which no run of this command saves), or it holds
    no Lightning checkpoint. A file cut short or otherwise broken may be this config's run."""
    cause = error.__cause__
    refused = isinstance(cause, pickle.UnpicklingError) and "Weights only load" in str(cause)
    return cause is None or refused


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

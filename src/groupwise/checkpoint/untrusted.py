"""Paths restored from a checkpoint are untrusted data.

What Lightning lacks: ``ModelCheckpoint.load_state_dict`` takes ``best_model_path``, the keys
of ``best_k_models``, ``kth_best_model_path`` and ``last_model_path`` from the checkpoint as
they are, and its next save removes the "previous" one of them after a lexical check only
(``Path.absolute()`` keeps ``..`` and follows no symlink; a path with an fsspec protocol such
as ``local://`` is not checked at all), through ``TorchCheckpointIO.remove_checkpoint``, which
is ``fs.rm(path, recursive=True)``: a crafted checkpoint could remove any directory the user
can write (docs/upstream/lightning-checkpoint-paths.md).

``RestoredPathGuard`` drops every such path that does not resolve to an entry inside the
resolved folder of the ``ModelCheckpoint`` it is restored into, with one warning naming it,
before any callback loads its state. ``AtomicCheckpointIO.remove_checkpoint`` is the second
line: it removes only a regular file or a symlink itself, in a folder it saved into.
"""

from __future__ import annotations

import ast
import os
import stat
from pathlib import PurePath
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

PATH_FIELDS = ("best_model_path", "kth_best_model_path", "last_model_path")


def is_url(path: str) -> bool:
    """An fsspec protocol or chain (``local://``, ``file://``, ``simplecache::``): fsspec
    opens and removes these, Lightning checks only plain paths."""
    return "://" in path or "::" in path


def inside_folder(path: Any, folder: str | None) -> bool:
    """Whether ``path`` names an entry strictly inside ``folder``, both resolved (``..`` and
    symlinks) and the folder compared by device and inode, so that any spelling of it
    (``//tmp``, a symlinked parent) matches; a folder that does not exist holds nothing.
    A remote folder (a URL) holds the URLs below it whose parts are plain names."""
    if not isinstance(path, str) or not path or folder is None:
        return False
    if is_url(folder):
        prefix = folder.rstrip("/") + "/"
        rest = path[len(prefix) :].split("/") if path.startswith(prefix) else [""]
        return all(part not in ("", ".", "..") for part in rest)
    if is_url(path):
        return False
    try:
        target = os.stat(folder)
        resolved = PurePath(os.path.realpath(path))
    except (OSError, ValueError):  # ValueError: an embedded NUL
        return False
    for parent in resolved.parents:
        try:
            if os.path.samestat(os.stat(parent), target):
                return True
        except (OSError, ValueError):
            continue
    return False


def beside_the_resumed_file(path_repr: str, resumed_from: Any) -> bool:
    """Whether a dropped path (as ``drop_untrusted_paths`` names it: its ``repr``) is a file,
    or nothing, directly in the folder of the checkpoint resumed from: an ordinary resume
    into a new run folder drops the earlier run's best and last files this way, and says
    nothing about them (the run only ever removes files in its own folder)."""
    if not isinstance(resumed_from, (str, os.PathLike)) or is_url(os.fspath(resumed_from)):
        return False
    try:
        path = ast.literal_eval(path_repr)
        resolved = os.path.realpath(path)
        folder = os.stat(os.path.dirname(os.path.realpath(resumed_from)))
        parent = os.stat(os.path.dirname(resolved))
        if not os.path.samestat(parent, folder):
            return False
        return not os.path.lexists(resolved) or stat.S_ISREG(os.lstat(resolved).st_mode)
    except (OSError, ValueError, SyntaxError, TypeError):
        return False


def drop_untrusted_paths(state: dict, folder: str | None, mode: str) -> dict[str, list[str]]:
    """Remove, in place, every path of a ``ModelCheckpoint`` ``state`` (as its
    ``state_dict`` wrote it) that is not inside ``folder``; return each dropped path's
    ``repr`` with the fields it was in. The state stays one Lightning can use: a dropped
    ``kth_best_model_path`` or ``best_model_path`` is taken again from the kept
    ``best_k_models`` as Lightning computes it (``mode``: ``"min"`` or ``"max"``), else
    emptied (Lightning's next top-k save looks ``kth_best_model_path`` up in
    ``best_k_models``)."""
    dropped: dict[str, list[str]] = {}
    best_k = state.get("best_k_models", {})
    if not isinstance(best_k, dict):
        dropped.setdefault(repr(best_k), []).append("best_k_models")
        best_k = {}
    for path in [p for p in best_k if not inside_folder(p, folder)]:
        dropped.setdefault(repr(path), []).append("best_k_models")
        del best_k[path]
    if "best_k_models" in state:
        state["best_k_models"] = best_k
    emptied = set()
    for field in PATH_FIELDS:
        path = state.get(field)
        if path not in (None, "") and not inside_folder(path, folder):
            dropped.setdefault(repr(path), []).append(field)
            state[field] = ""
            emptied.add(field)
    worst, best = (max, min) if mode == "min" else (min, max)
    if best_k and state.get("kth_best_model_path") not in best_k:
        state["kth_best_model_path"] = worst(best_k, key=best_k.get)
        state["kth_value"] = best_k[state["kth_best_model_path"]]
    if "best_model_path" in emptied:
        state["best_model_path"] = best(best_k, key=best_k.get) if best_k else ""
        state["best_model_score"] = best_k[state["best_model_path"]] if best_k else None
    return dropped


class RestoredPathGuard(Callback):
    """Drops the paths a checkpoint would restore into each ``ModelCheckpoint`` of the
    trainer that are not inside that callback's resolved folder (``drop_untrusted_paths``),
    with one warning line per path. Lightning calls every callback's ``on_load_checkpoint``
    before any callback's ``load_state_dict``, and after ``setup``, where a
    ``ModelCheckpoint`` resolves its folder."""

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("callbacks")
        if not isinstance(states, dict):
            return
        resumed_from = trainer.ckpt_path
        for callback in trainer.callbacks:
            if not isinstance(callback, ModelCheckpoint):
                continue
            for key in (callback.state_key, type(callback)):  # type: checkpoints before 1.5
                state = states.get(key)
                if isinstance(state, dict):
                    self._drop(callback, state, resumed_from)

    @staticmethod
    def _drop(callback: ModelCheckpoint, state: dict, resumed_from: Any) -> None:
        folder = callback.dirpath
        for path, fields in drop_untrusted_paths(state, folder, callback.mode).items():
            if beside_the_resumed_file(path, resumed_from):
                continue  # the earlier run's own best / last: dropped without a word
            rank_zero_warn(
                f"ModelCheckpoint(monitor={callback.monitor!r}): the checkpoint's path {path}"
                f" ({', '.join(fields)}) is outside this run's checkpoint folder {folder};"
                " ignored (a run removes, replaces and links only files in its own checkpoint"
                " folder)"
            )

"""Checkpoint files that are never half-written and are loaded without running pickled code.

What Lightning's ``TorchCheckpointIO`` lacks:
- Saving: it writes through an fsspec transaction whose temporary file is made in the
  *system* temp directory and moved into place with ``shutil.move``. When that directory
  is on another filesystem (a tmpfs ``/tmp``, a network or cluster scratch mount) the move
  is a copy, so a kill during it leaves a truncated checkpoint where the good one was; and
  nothing is fsynced. Here the temporary file sits beside the target, is fsynced, and
  replaces it with one ``os.replace`` (atomic on POSIX and Windows). A save that fails (no
  space left, permission denied, quota) raises ``CheckpointSaveError`` naming the target
  file and the system's error, and leaves the previous file as it was: torch's zip writer
  itself turns an ``OSError`` from ``write`` into ``RuntimeError: unexpected pos 64 vs 0``.
- Leftovers: a kill during a save leaves its temporary file (``.last.ckpt.tmp-<pid>``)
  behind; the next successful save of the same file removes those of processes that are
  no longer running (``remove_stale_temporaries``).
- Loading: a truncated or foreign file surfaces as a low-level unpickling or zip error;
  here the error names the file and what it expected. ``weights_only=True`` is the
  default, so a checkpoint cannot run code when loaded.
- Removing: it removes whatever is at the path, recursively (``fs.rm(path,
  recursive=True)``), and ``ModelCheckpoint`` asks it to remove paths restored from the
  checkpoint after a lexical check only. Here only a regular file, or a symlink itself, is
  removed, and only in a folder this object saved a checkpoint into (the folder resolved:
  compared by device and inode); anything else is left, with a warning naming it (see
  ``groupwise.checkpoint.untrusted`` for the first line of defence).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn

from groupwise.checkpoint.untrusted import is_url
from groupwise.errors import UserError, did_you_mean


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


class CheckpointSaveError(OSError):
    """A checkpoint that could not be written; ``errno`` is the system's error number."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with same-directory atomic saves, checked, safe loads and
    removals confined to the folders it saved into."""

    def __init__(self) -> None:
        super().__init__()
        self._saved_folders: set[tuple[int, int]] = set()  # (st_dev, st_ino)

    def save_checkpoint(
        self,
        checkpoint: dict[str, Any],
        path: str | os.PathLike,
        storage_options: Any | None = None,
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        writer = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as file:
                writer = _KeepWriteError(file)
                torch.save(checkpoint, writer)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except (OSError, RuntimeError) as error:
            cause = writer.error if writer is not None and writer.error else error
            if not isinstance(cause, OSError):
                raise
            kept = (
                f"the previous {path.name} is unchanged (resume from it with --ckpt_path)"
                if path.exists()
                else f"no {path.name} was written"
            )
            raise CheckpointSaveError(
                cause.errno,
                f"cannot save checkpoint {path}: {cause.strerror or cause} (while writing"
                f" {temporary.name}); {kept}. Free disk space or fix the permissions there.",
            ) from cause
        finally:
            # e.g. no permission: the error above is the one to report
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
        _fsync_directory(path.parent)
        folder = path.parent.stat()
        self._saved_folders.add((folder.st_dev, folder.st_ino))
        remove_stale_temporaries(path)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        """Remove the regular file or the symlink (not its target) at ``path`` if it lies
        directly in a folder this object saved a checkpoint into; nothing if it does not
        exist; anything else is left, with a warning that names it."""
        path = os.fspath(path)
        reason = self._not_removable(path)
        if reason is not None:
            rank_zero_warn(f"not removing checkpoint path {path!r}: {reason}")
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _not_removable(self, path: str) -> str | None:
        """Why ``path`` may not be removed, or None (also for a path that does not exist)."""
        if is_url(path):
            return "not a local path"
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:  # ValueError: an embedded NUL
            return f"cannot inspect it ({error})"
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            return "not a regular file (a checkpoint is never a directory)"
        try:
            folder = os.stat(os.path.dirname(path) or ".")
        except OSError as error:
            return f"cannot inspect its folder ({error})"
        if (folder.st_dev, folder.st_ino) not in self._saved_folders:
            return "not in a folder this run saved checkpoints into"
        return None

    def load_checkpoint(
        self,
        path: str | os.PathLike,
        map_location: Any | None = lambda storage, loc: storage,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        safe = True if weights_only is None else weights_only
        return load_checkpoint_file(path, map_location, safe)


def load_checkpoint_file(
    path: str | os.PathLike,
    map_location: Any | None = "cpu",
    weights_only: bool = True,
    mmap: bool = False,
) -> dict[str, Any]:
    """Load a Lightning checkpoint, with errors that name the file and what was expected.
    ``mmap``: map the tensors' bytes instead of reading them (cheap when only the
    checkpoint's other entries are looked at)."""
    path = Path(path)
    if not path.is_file():
        siblings = [p.name for p in path.parent.iterdir()] if path.parent.is_dir() else []
        hint = did_you_mean(path.name, siblings)
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    try:
        checkpoint = torch.load(
            path, map_location=map_location, weights_only=weights_only, mmap=mmap
        )
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        lines = str(error).splitlines() or [""]
        # weights_only refusals name the refused global on a later line: keep that one.
        reason = next((line.strip() for line in lines if "GLOBAL" in line), lines[0])
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {reason}). It may be "
            "truncated, not a Lightning checkpoint, or hold objects other than tensors and "
            "plain data; use another one, e.g. the best or an earlier last.ckpt"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        is_dict = isinstance(checkpoint, dict)
        found = sorted(map(str, checkpoint))[:8] if is_dict else type(checkpoint).__name__
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint: expected a dict with 'state_dict', "
            f"'optimizer_states', ...; found {found}"
        )
    return checkpoint


class _KeepWriteError:
    """A file for ``torch.save`` that keeps the ``OSError`` its ``write`` raised (torch's
    zip writer reports it as a ``RuntimeError`` without the system's error)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.file.flush()

    @property
    def name(self) -> str:
        return self.file.name


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Delete the temporaries ``.<name>.tmp-<pid>`` beside ``path`` whose process is no
    longer running (a save killed part-way); return them. A running process's temporary
    (a save in progress) is kept, and so is every file on Windows, where there is no
    side-effect-free liveness check."""
    if os.name == "nt":
        return []
    prefix, removed = f".{path.name}.tmp-", []
    for temporary in path.parent.iterdir():
        pid = temporary.name[len(prefix) :]
        if temporary.name.startswith(prefix) and pid.isdigit() and not _is_running(int(pid)):
            temporary.unlink(missing_ok=True)
            removed.append(temporary)
    return removed


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories can't be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

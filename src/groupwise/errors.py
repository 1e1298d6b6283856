"""Errors a user fixes by changing the command, the config, the data or a file.

Every such error of this project derives from ``UserError`` and from the built-in class it
always was (``ParamGroupError`` is a ``ValueError``, ``CheckpointError`` a
``RuntimeError``, ``CIFAR10NotFoundError`` a ``FileNotFoundError``), so code that catches
the built-in class still does. The ``groupwise`` command prints such an error as one
message, ``error: <message>`` on stderr, and exits with status 2, as jsonargparse does for
its own config errors; ``GROUPWISE_DEBUG=1`` in the environment shows the traceback
instead (jsonargparse's ``JSONARGPARSE_DEBUG=1`` does the same for its errors). Any other
exception is a bug and keeps its traceback.

``did_you_mean`` adds the nearest valid name to a message about an unknown one (the
standard library's ``difflib.get_close_matches``).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

DEBUG_ENV = "GROUPWISE_DEBUG"
EXIT_CODE = 2  # as jsonargparse's (argparse's) usage errors


class UserError(Exception):
    """An error in what the user gave (config, groups, data, checkpoint): the CLI prints
    its message alone and exits with status 2."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work: a schedule's milestones, a callback's options,
    a net's sizes."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the valid name nearest to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _rank() -> int:
    """The process's global rank as the launchers set it (0 outside distributed runs)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a ``UserError`` into ``error: <message>`` on stderr and exit status 2 (the
    traceback under ``GROUPWISE_DEBUG=1``). Under DDP every rank that fails says so, ranks
    other than 0 with their rank in front."""
    try:
        yield
    except UserError as error:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        rank = _rank()
        prefix = f"[rank {rank}] " if rank else ""
        print(f"{prefix}error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CODE) from None

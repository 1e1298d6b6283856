"""What a ``groupwise`` run prints: the run's own lines, not the libraries' chatter.

A default run prints the seed, the device in one line, the group table, the model summary,
the progress bar, each warning about this run once and without a source line, and the run
summary. ``GROUPWISE_VERBOSE=1`` in the environment shows everything as the libraries print
it.

What Lightning lacks: it logs, on every run, lines that are about Lightning and not about
the run ("GPU available: False, used: False", "TPU available: ...", an advertisement for
litlogger, "`weights_only` was not set" at every ``Trainer.save_checkpoint``, a box around
"All distributed processes registered"), warns about its own use of deprecated torch
functions, and has no switch for any of these but a process-wide logging level or warning
filter, which would hide the useful lines of the same logger or category too. So
``quiet_console`` hides exactly the messages listed in ``QUIET_LOGS`` and
``QUIET_WARNINGS``, each by its text and the module that emits it, and only while a run
lasts: it leaves the process's warning filters, ``warnings.formatwarning`` and the
loggers' filters as it found them (a script that calls ``groupwise.cli.run`` keeps its
own settings).

Under DDP every process runs the same config, so groupwise's own warnings (about the
config and the data) are shown by rank 0 only; other libraries' warnings from other ranks
still show, since they may concern that process alone.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lightning_utilities.core.rank_zero as rank_zero
from lightning.pytorch.utilities import rank_zero_only

if TYPE_CHECKING:
    from lightning.pytorch import Trainer

VERBOSE_ENV = "GROUPWISE_VERBOSE"


@dataclass(frozen=True)
class Quiet:
    """A library message a default run does not show: ``message`` (a regular expression
    matched at the start of its text) emitted by ``module`` (the dotted module name the
    warning is attributed to, or the source file of the log record, matched in full)."""

    module: str
    message: str
    why: str

    def matches(self, module: str, message: str) -> bool:
        return bool(re.fullmatch(self.module, module) and re.match(self.message, message))


QUIET_LOGS = (
    Quiet(r"lightning\.pytorch\.trainer\.setup", r"GPU available: ", "one device line instead"),
    Quiet(r"lightning\.pytorch\.trainer\.setup", r"TPU available: ", "one device line instead"),
    Quiet(
        r"lightning\.pytorch\.trainer\.setup",
        r"`Trainer\(\w+=1(\.0)?\)` was configured so ",
        "repeats a setting of the config",
    ),
    Quiet(
        r"lightning\.pytorch\.trainer\.connectors\.logger_connector\.logger_connector",
        r"(💡 )?Tip: .*litlogger",
        "an advertisement",
    ),
    Quiet(
        r"lightning\.pytorch\.trainer\.connectors\.checkpoint_connector",
        r"`weights_only` was not set, defaulting to `False`",
        "at every Trainer.save_checkpoint (the preemption save)",
    ),
    Quiet(
        r"lightning\.fabric\.utilities\.distributed",
        r"Initializing distributed: GLOBAL_RANK: ",
        "one line per rank; the device line says how many processes",
    ),
    Quiet(
        r"lightning\.fabric\.utilities\.distributed",
        r"-+\ndistributed_backend=",
        "a box around the number of processes",
    ),
    Quiet(
        r"lightning\.fabric\.utilities\.seed",
        r"\[rank: [1-9][0-9]*\] Seed set to ",
        "rank 0 says it",
    ),
)

QUIET_WARNINGS = (
    Quiet(
        r"lightning\.pytorch\.utilities\._pytree",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "inside Lightning, about its own use of torch",
    ),
    Quiet(
        r"lightning\.fabric\.utilities\.distributed",
        r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
        "inside Lightning's all_gather, about its own use of torch",
    ),
    Quiet(
        r"lightning\.pytorch\.callbacks\.model_checkpoint",
        r"The dirpath has changed from .* won't be reloaded",
        "every resume, validate and predict into a new run directory",
    ),
)


def verbose_requested() -> bool:
    """Whether ``GROUPWISE_VERBOSE`` asks for everything (set, and not ``0``)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def module_name(path: str) -> str:
    """The dotted module name of source file ``path`` (``lightning.pytorch.trainer.setup``),
    from the longest ``sys.path`` entry that holds it; the file's stem if none does."""
    file = Path(path)
    for root in sorted((Path(p or ".").absolute() for p in sys.path), key=lambda p: -len(str(p))):
        if file.is_relative_to(root):
            parts = list(file.relative_to(root).with_suffix("").parts)
            if parts and parts[-1] == "__init__":
                parts.pop()
            return ".".join(parts)
    return file.stem


class QuietLogs(logging.Filter):
    """Drops the log records of ``QUIET_LOGS``."""

    def filter(self, record: logging.LogRecord) -> bool:
        module, message = module_name(record.pathname), record.getMessage()
        return not any(rule.matches(module, message) for rule in QUIET_LOGS)


def quiet_loggers() -> list[logging.Logger]:
    """The loggers that emit ``QUIET_LOGS``: Lightning's ``rank_zero_info`` logger (whichever
    Lightning package set it) and the module loggers that log them directly."""
    names = (
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        "lightning.fabric.utilities.distributed",
        "lightning.fabric.utilities.seed",
    )
    return [rank_zero.log, *(logging.getLogger(name) for name in names)]


def format_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line=None
) -> str:
    """``warning: <message>`` for groupwise's own warnings; other warnings also name their
    category and module. No file, line number or source line."""
    module = module_name(filename)
    if module == "groupwise" or module.startswith("groupwise."):
        return f"warning: {message}\n"
    return f"warning: {message} ({category.__name__}, {module})\n"


@contextmanager
def quiet_console(verbose: bool | None = None) -> Iterator[None]:
    """For the duration of a run: hide ``QUIET_LOGS`` and ``QUIET_WARNINGS``, print warnings
    with ``format_warning``, and on ranks other than 0 hide groupwise's own warnings. Unless
    ``verbose`` (default: ``GROUPWISE_VERBOSE``), which changes nothing. Restores the
    warning filters, ``warnings.formatwarning`` and the loggers' filters on exit."""
    if verbose_requested() if verbose is None else verbose:
        yield
        return
    quiet_logs, loggers = QuietLogs(), quiet_loggers()
    formatwarning = warnings.formatwarning
    with warnings.catch_warnings():
        for rule in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=rule.message, module=rule.module + r"\Z")
        if rank_zero_only.rank != 0:
            warnings.filterwarnings("ignore", module=r"groupwise(\..*)?\Z")
        warnings.formatwarning = format_warning
        for logger in loggers:
            logger.addFilter(quiet_logs)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeFilter(quiet_logs)
            warnings.formatwarning = formatwarning


def device_line(trainer: Trainer) -> str:
    """The device a run uses, in one line: ``device: cpu, 1 process`` or
    ``device: cuda, 8 processes (DDP, 2 nodes x 4 devices)``."""
    accelerator = type(trainer.accelerator).__name__.removesuffix("Accelerator").lower()
    processes = trainer.world_size
    line = f"device: {accelerator}, {processes} process{'es' if processes > 1 else ''}"
    if processes > 1:
        strategy = type(trainer.strategy).__name__.removesuffix("Strategy")
        nodes, devices = trainer.num_nodes, trainer.num_devices
        line += f" ({strategy}, {nodes} node{'s' if nodes > 1 else ''} x {devices} devices)"
    return line

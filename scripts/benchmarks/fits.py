"""How benchmarks run the template's fit: in this process through the CLI's objects
(``template_fit``), or as ``groupwise fit`` in a child process with probe callbacks
(``child_fit``), plus the training images both sides of a comparison share."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

from benchmarks.harness import child_env
from groupwise.callbacks.group_stats import GroupStats
from groupwise.cli import run


class TrainTimer(Callback):
    """Seconds from ``on_train_start`` to ``on_train_end``, and how much of that lies
    outside the steps (before the first batch's start, after the last batch's end)."""

    def __init__(self) -> None:
        self.start = self.end = self.first_batch = self.last_batch = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.first_batch:
            self.first_batch = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.last_batch = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.end = time.perf_counter()

    @property
    def outside_steps(self) -> float:
        return (self.first_batch - self.start) + (self.end - self.last_batch)


def cli_args(
    config: Path,
    data_dir: Path,
    steps: int,
    root: str,
    progress_bar: bool = True,
    batch_size: int | None = None,
) -> list[str]:
    """``groupwise fit`` arguments of an in-process benchmark fit: ``steps`` optimizer
    steps, no validation, CPU, 32-bit, into ``root``; ``batch_size`` overrides the config's."""
    return [
        "--config", str(config),
        f"--data.data_dir={data_dir}",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.accelerator=cpu",
        "--trainer.precision=32-true",
        f"--trainer.default_root_dir={root}",
        f"--trainer.enable_progress_bar={progress_bar}",
        *([f"--data.batch_size={batch_size}"] if batch_size else []),
    ]  # fmt: skip


def template_fit(
    config: Path,
    data_dir: Path,
    steps: int,
    root: str,
    lean: bool = False,
    bare: bool = False,
    batch_size: int | None = None,
    callbacks: Sequence[Callback] = (),
    on_net: Callable[[torch.nn.Module], Any] | None = None,
) -> tuple[float, float]:
    """Seconds of training through the template's CLI exactly as ``groupwise fit`` builds it
    (every default callback), and the part of them outside the steps (loader start, epoch
    end: checkpoint, logger). ``lean``: no progress bar, no GroupStats; ``bare``: no
    callback and no logger at all. ``callbacks`` are appended (after the timer is);
    ``on_net(net)`` is called before the fit (e.g. to add a forward hook)."""
    cli = run(cli_args(config, data_dir, steps, root, not (lean or bare), batch_size), run=False)
    trainer = cli.trainer
    if lean:
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, GroupStats)]
    if bare:
        trainer.callbacks, trainer.loggers = [], []
    timer = TrainTimer()
    trainer.callbacks.extend([timer, *callbacks])
    if on_net is not None:
        on_net(cli.model.net)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    if trainer.global_step != steps:
        raise RuntimeError(f"the template ran {trainer.global_step} steps, not {steps}")
    return timer.end - timer.start, timer.outside_steps


def training_tensors(
    config: Path, data_dir: Path, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, str, int]:
    """The config's training images (uint8) and labels as the DataModule holds them in
    memory, the net's class name and the batch size."""
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        probe = run(cli_args(config, data_dir, 1, root, False, batch_size), run=False)
    datamodule = probe.datamodule
    datamodule.prepare_data()
    datamodule.setup("fit")
    images, labels = datamodule.train_set.tensors
    return images, labels, type(probe.model.net).__name__, datamodule.batch_size


def quiet_logs() -> None:
    """Lightning's and groupwise's info lines (summary, group table) off for every fit."""
    for name in ("lightning.pytorch", "lightning.fabric", "groupwise"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def silenced(show: bool = False) -> Iterator[None]:
    """stdout and stderr into a buffer (the progress bar, drawn as in a terminal, kept off
    the table), unless ``show``."""
    with contextlib.ExitStack() as stack:
        if not show:
            stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        yield


def decode_cache(data_dir: Path) -> None:
    """Build the DataModule's decode cache if missing (not timed by any benchmark)."""
    from groupwise.data.cifar10 import CIFAR10DataModule

    CIFAR10DataModule(str(data_dir), download=False).prepare_data()


def callback_arg(class_path: str, **init_args: Any) -> str:
    """The ``groupwise fit`` argument that adds a callback by class path, e.g. a probe of
    a benchmark module (``benchmarks.NAME.Probe``, importable in :func:`child_fit`)."""
    callback = {"class_path": class_path, "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(callback)}"


def child_fit(
    arguments: Sequence[str], env: dict[str, str] | None = None, what: str = "fit"
) -> subprocess.CompletedProcess:
    """``groupwise ARGUMENTS`` in a fresh process, exactly as a user runs it, with
    ``scripts/`` on its ``PYTHONPATH`` so that callbacks of the benchmark modules import;
    ``env`` replaces the environment. Exits with the child's last stderr when it fails."""
    command = [str(Path(sys.executable).parent / "groupwise"), *arguments]
    done = subprocess.run(command, env=child_env(env), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{what}: fit failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done

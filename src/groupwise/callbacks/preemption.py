"""Stop on a preemption signal at the next optimizer-step boundary, with a resumable checkpoint.

What Lightning lacks: on SIGTERM its loops raise ``SIGTERMException`` (a ``SystemExit``
with status 0, as if the run had finished) after the current batch *and* any validation
due, without saving anything, and the loader position is lost; SIGUSR1 is handled only
under SLURM with auto-requeue, where its handler saves ``hpc_ckpt_N.ckpt`` from inside the
signal handler, i.e. wherever the step happens to be. Here the handler only records the
signal; the run goes on to the end of the current optimizer step (with gradient
accumulation, to the end of the window under way: a checkpoint inside one would lose the
gradients accumulated so far), or of the validation pass under way, all ranks agree on
it (under DDP one all-reduce every ``every_n_steps`` steps, by default Lightning's logging
steps, and at each validation end), the
checkpoint is written through the trainer (atomically: ``AtomicCheckpointIO``; every
callback's state, the optimizer, schedulers and the loader's position in the epoch
included), the handler that was there before for that signal is then called (Lightning's
SLURM requeue, which saves its hpc checkpoint at this same point and runs
``scontrol requeue``) and the process exits with ``exit_code``. Lightning's own SIGTERM
handler is replaced while training runs (the trainer restores it at teardown).

Under DDP, Lightning 2.6 broadcasts rank 0's SIGTERM flag before every training step
(``_broadcast_sigterm_tensor`` in its training epoch loop): a collective, a tensor made
from Python data and an ``.item()`` per step, i.e. a host sync on GPUs. While this callback
handles SIGTERM, Lightning's handler is not installed, so that flag can never be set: the
broadcast is turned off for the fit (an instance attribute on the loop, removed at the
end; ``tests/test_lightning_private_api.py`` guards the name) and this callback's own
agreement, every ``every_n_steps`` steps, is the only one.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

#: ``EX_TEMPFAIL`` of sysexits.h: "a temporary failure; the user is invited to retry"
RESUMABLE_EXIT_CODE = 75


class Preempted(SIGTERMException):
    """Raised on every rank after the preemption checkpoint is written; its ``code`` is
    the process's exit status."""


class Preemption(Callback):
    """On ``signals``, finish the optimizer step, save ``<dirpath>/<filename>.ckpt`` and exit.

    Args:
        signals: Signal names that mean "stop and save", e.g. ``[SIGTERM, SIGUSR1]``
            (SLURM's ``--signal``, a spot instance's SIGTERM); an empty list turns this off.
        exit_code: The process's exit status after the save: 75 (``EX_TEMPFAIL``) says
            "stopped early, resume with ``--ckpt_path last``".
        filename: The checkpoint's name without ``.ckpt``, in the directory of the
            ``ModelCheckpoint`` with that filename (the CLI's ``last_checkpoint``), else of
            the first ``ModelCheckpoint``, else ``<default_root_dir>/checkpoints``. With
            ``last`` the file is the one ``--ckpt_path last`` resumes from.
        every_n_steps: Under DDP, the ranks agree on a signal (one max all-reduce, a host
            read on GPUs) after every ``every_n_steps``-th optimizer step; ``None``: the
            trainer's ``log_every_n_steps``, the steps on which Lightning reads the
            logged values anyway. In one process the signal is acted on after every
            step whatever this is (reading a Python flag costs nothing).

    A signal at the run's last batch (or during the validation after it) lets the run
    finish as usual, exit status 0: only its epoch end and checkpoints are left.

    The time from the signal to the exit is one training step in one process (with
    ``accumulate_grad_batches`` N, up to N batches: the window under way is finished) and up
    to ``every_n_steps`` steps under DDP, or the rest of a validation pass when the signal
    comes during one (and of the window, when that validation ran inside one), plus the
    save.
    """

    def __init__(
        self,
        signals: list[str] | None = None,
        exit_code: int = RESUMABLE_EXIT_CODE,
        filename: str = "last",
        every_n_steps: int | None = None,
    ) -> None:
        names = ["SIGTERM", "SIGUSR1"] if signals is None else list(signals)
        valid = sorted(s.name for s in signal.valid_signals() if isinstance(s, signal.Signals))
        bad = [n for n in names if n not in valid or n in ("SIGKILL", "SIGSTOP")]
        if bad:
            raise ValueError(
                f"preemption.signals: {bad} cannot be caught; use signal names such as"
                f" SIGTERM, SIGUSR1, SIGUSR2, SIGINT (valid here: {', '.join(valid)})"
            )
        if not 0 <= exit_code <= 255:
            raise ValueError(f"preemption.exit_code must be in [0, 255], got {exit_code}")
        self.signals = [signal.Signals[n] for n in names]
        self.exit_code = exit_code
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(
                f"preemption.every_n_steps must be a positive number of steps or null (the"
                f" trainer's log_every_n_steps), got {every_n_steps}"
            )
        self.filename = filename
        self.every_n_steps = every_n_steps
        self._received: tuple[signal.Signals, float] | None = None
        self._previous: dict[signal.Signals, Any] = {}
        self._stop_next = False
        self._signal: signal.Signals | None = None  # the one all ranks act on
        # the global step after the last training batch, and whether that batch left a
        # gradient-accumulation window open (no optimizer step yet)
        self._step_seen = -1
        self._in_window = False

    # ---- the handlers --------------------------------------------------------------------

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _load_loader_position(trainer)
        # after the trainer registered its own (``_SignalConnector``), which it restores
        # at teardown; only the main thread may set handlers
        self._received, self._stop_next = None, False
        self._step_seen, self._in_window = trainer.global_step, False
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._record)
        if signal.SIGTERM in self.signals and trainer.world_size > 1:
            # Lightning's handler is replaced: its per-step broadcast of the flag that
            # handler sets could only ever send 0 (see the module docstring)
            trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = _no_broadcast

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _restore_broadcast(trainer)

    def on_exception(self, trainer: L.Trainer, *args: Any) -> None:
        _restore_broadcast(trainer)

    def _record(self, signum: int, frame: Any) -> None:
        if self._received is None:
            self._received = (signal.Signals(signum), time.monotonic())

    # ---- where the run stops ---------------------------------------------------------------

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # after the optimizer and per-step scheduler steps, where ModelCheckpoint's
        # every_n_train_steps saves: Lightning's resume counts the batch as done. Inside a
        # gradient-accumulation window no step was taken (global_step is unchanged) and the
        # gradients accumulated so far are in no checkpoint: the signal waits for the
        # window's last batch (Lightning steps at an epoch's last batch whatever is left)
        self._in_window = trainer.global_step == self._step_seen
        self._step_seen = trainer.global_step
        if self._in_window:
            return
        if _last_batch_of_the_run(trainer):
            return  # the run ends at this epoch's end, writing its checkpoints: let it
        if _validation_follows(trainer):
            # acted on at that validation's end: Lightning resumes a checkpoint saved here
            # after that validation (it would be skipped: no val/acc, no best checkpoint
            # of it, and at the last batch of the run no final checkpoint at all)
            return
        every = self.every_n_steps or trainer.log_every_n_steps or 1
        if trainer.world_size > 1 and trainer.global_step % every:
            return  # not a step on which the ranks agree (global_step counts this one)
        if self._agreed(trainer):
            self._save_and_exit(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a signal during validation: save where the epoch's last.ckpt is saved; the
        # ModelCheckpoints (ordered after this callback) then save too, and the run stops
        # at the next training hook
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._in_window:  # a validation inside an accumulation window (val_check_interval)
            return  # the signal is acted on at the window's optimizer step
        if _last_batch_of_the_run(trainer):
            return  # the run's last validation: the run finishes, writing its checkpoints
        if self._agreed(trainer):
            self._save(trainer)
            self._stop_next = True

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._stop_if_saved(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_if_saved(trainer)

    def _agreed(self, trainer: L.Trainer) -> bool:
        """Whether any rank got a signal, the same answer on every rank; ``self._signal``
        is then the same signal on every rank (the highest number any rank got)."""
        mine = int(self._received[0]) if self._received else 0
        if trainer.world_size > 1:
            number = torch.tensor(mine, device=trainer.strategy.root_device)
            mine = int(trainer.strategy.reduce(number, reduce_op="max"))
        self._signal = signal.Signals(mine) if mine else None
        return self._signal is not None

    def _save_and_exit(self, trainer: L.Trainer) -> None:
        self._save(trainer)
        self._stop_next = True
        self._stop_if_saved(trainer)

    def _stop_if_saved(self, trainer: L.Trainer) -> None:
        if not self._stop_next:
            return
        signum = self._signal
        previous = self._previous.get(signum)
        if callable(previous) and signum != signal.SIGTERM:
            # e.g. Lightning's SLURM auto-requeue on SIGUSR1: its hpc save and requeue, at
            # this step boundary instead of in the middle of a step
            previous(signum, None)
        elapsed = f" {time.monotonic() - self._received[1]:.2f} s after" if self._received else ""
        rank_zero_info(
            f"Stopped{elapsed} {signum.name}; exit status"
            f" {self.exit_code}: resume with --ckpt_path last"
        )
        raise Preempted(self.exit_code)

    def _save(self, trainer: L.Trainer) -> None:
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        at = self._received[1] if self._received else time.monotonic()  # another rank's
        rank_zero_info(
            f"Preemption ({self._signal.name}): saved {path}"
            f" at step {trainer.global_step} (epoch {trainer.current_epoch}, batch"
            f" {trainer.fit_loop.epoch_loop.batch_progress.current.completed}) in"
            f" {time.monotonic() - at:.2f} s from the signal"
        )

    def checkpoint_path(self, trainer: L.Trainer) -> str:
        """Where the checkpoint goes (see ``filename``)."""
        callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
        named = [c for c in callbacks if c.filename == self.filename] or callbacks
        dirpath = named[0].dirpath if named and named[0].dirpath else None
        if dirpath is None:
            dirpath = Path(trainer.default_root_dir) / "checkpoints"
        return str(Path(dirpath) / f"{self.filename}{ModelCheckpoint.FILE_EXTENSION}")


def _last_batch_of_the_run(trainer: L.Trainer) -> bool:
    """Whether the training batch that just ended was the run's last (of its last epoch, or
    its ``max_steps``-th step). A signal there lets the run finish: only the epoch's end is
    left, and a checkpoint saved before it resumes into a run with nothing left to do, so
    that the last validation and checkpoints would never be written."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return True
    last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
    return last_epoch and bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)


def _validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the training batch that just ended: its
    own decision, ``_TrainingEpochLoop._should_check_val_fx`` (private; no public API says
    it; ``tests/test_lightning_private_api.py`` guards it)."""
    loop = trainer.fit_loop
    return bool(loop.epoch_loop._should_check_val_fx(loop._data_fetcher))


def _no_broadcast() -> None:
    """In place of Lightning's per-step SIGTERM broadcast while ``Preemption`` handles
    SIGTERM."""


def _restore_broadcast(trainer: L.Trainer) -> None:
    vars(trainer.fit_loop.epoch_loop).pop("_broadcast_sigterm_tensor", None)


def _load_loader_position(trainer: L.Trainer) -> None:
    """Give the training loader its saved position, where Lightning did not.

    Lightning loads a stateful loader's ``state_dict`` only when ``FitLoop.setup_data``
    builds the loader after the checkpoint's loop state was restored. When the loader was
    built earlier, as ``trainer.estimated_stepping_batches`` does from
    ``configure_optimizers`` (a schedule whose length comes from the trainer, as the fast
    recipe's), ``setup_data`` returns early and the state is dropped: the resumed epoch
    would start again at its first batch. Here, before the first batch is fetched, the
    pending state is loaded and the epoch's iterator made anew from it.
    """
    loop = trainer.fit_loop
    if loop._combined_loader_states_to_load and loop._data_fetcher is not None:
        loop._load_combined_loader_states()
        iter(loop._data_fetcher)
    _restart_a_finished_epoch(trainer)


def _restart_a_finished_epoch(trainer: L.Trainer) -> None:
    """Start the next epoch at its first batch when the saved position is the end of an
    epoch that ``limit_train_batches`` cut short.

    What Lightning lacks: it hands the loader the position it saved (4 batches into 6, for a
    checkpoint after the 4th and last batch of a limited epoch), which the loader cannot
    tell from a position in mid-epoch; the resumed loop sees the epoch done and runs the
    next one on the iterator made from that position (``_TrainingEpochLoop.on_run_start``
    makes no new one while resuming), so the next epoch would skip its first 4 batches.
    """
    loader = trainer.train_dataloader
    if not (hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")):
        return
    position = loader.state_dict().get("batches", 0)
    finished = position > 0 and position >= trainer.num_training_batches
    if finished and trainer.fit_loop._data_fetcher is not None:
        loader.load_state_dict({"batches": 0})
        iter(trainer.fit_loop._data_fetcher)

"""Callbacks that break a run on purpose or record what it did, added by tests through
`--trainer.callbacks+=...`."""

import builtins
import io
import json
import os
import signal
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def kill_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(Callback):
    """SIGKILL the process after global step ``step`` (mid-epoch, nothing flushed)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step:
            kill_now()


class KillDuringLastSave(Callback):
    """SIGKILL the process half-way through writing ``last.ckpt`` in epoch ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.save = torch.save

    def on_train_epoch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.current_epoch != self.epoch:
            return

        def half_then_kill(obj, f, *a, **k):
            if "last.ckpt" not in str(getattr(f, "name", f)):
                return self.save(obj, f, *a, **k)
            buffer = io.BytesIO()
            self.save(obj, buffer, *a, **k)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            kill_now()

        torch.save = half_then_kill


class PoisonAtStep(Callback):
    """Set one weight to NaN before the batch of global step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *a) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class PoisonAfterStep(Callback):
    """Set one weight to NaN after the optimizer step of global step ``step`` (the step's
    loss is finite; the next one's is not), before any checkpoint of that step is saved."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *a) -> None:
        if trainer.global_step == self.step + 1:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


class RecordRank(Callback):
    """Write, per rank, the training and validation indices fetched each epoch, the final
    weights, the final metrics, the image count of the last validation confusion matrix,
    the node rank, the cluster environment's class and every checkpoint file this rank's
    checkpoint plugin wrote to ``<out>/rank<r>.pt``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.seen: dict[int, list[int]] = {}
        self.val_seen: dict[int, list[int]] = {}
        self._val_recorded = False
        self.saves: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def recording(checkpoint, path, *args, **kwargs):
            self.saves.append(str(path))
            return save(checkpoint, path, *args, **kwargs)

        io.save_checkpoint = recording

    def _record(self, trainer: L.Trainer, dataset, seen: dict[int, list[int]]) -> None:
        fetch = dataset.__getitems__

        def recording(indices):
            if not trainer.sanity_checking:
                seen.setdefault(trainer.current_epoch, []).extend(indices)
            return fetch(indices)

        dataset.__getitems__ = recording

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer, trainer.train_dataloader.dataset, self.seen)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._val_recorded and not trainer.sanity_checking:
            self._val_recorded = True
            self._record(trainer, trainer.val_dataloaders.dataset, self.val_seen)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        matrices = [c.last_matrix for c in trainer.callbacks if hasattr(c, "last_matrix")]
        record = {
            "seen": self.seen,
            "val_seen": self.val_seen,
            "state_dict": state,
            "metrics": metrics,
            "confusion_total": [int(m.sum()) for m in matrices if m is not None],
            "node_rank": trainer.node_rank,
            "environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
            "saves": self.saves,
        }
        torch.save(record, self.out / f"rank{trainer.global_rank}.pt")


class RecordTrainStart(Callback):
    """Keep in ``self.record`` what training starts from, after any ``setup`` weight loading
    and ``--ckpt_path`` restore: a copy of the weights, the epoch and global step, each
    optimizer group's (name, lr, tensor count), how many parameters have optimizer state
    (momentum buffers) and each scheduler's ``last_epoch``. Read it back in-process from
    ``trainer.callbacks``."""

    def __init__(self) -> None:
        self.record: dict | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.record = {
            "state_dict": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "groups": [
                (group["name"], group["lr"], len(group["params"]))
                for optimizer in trainer.optimizers
                for group in optimizer.param_groups
            ],
            "optimizer_state": sum(len(optimizer.state) for optimizer in trainer.optimizers),
            "scheduler_last_epoch": [c.scheduler.last_epoch for c in trainer.lr_scheduler_configs],
        }


class PauseCacheWrite(Callback):
    """Make this process pause half-way through writing the decode cache, until the file
    ``until`` exists (10 minutes at most). Patched when the callback is built (the CLI
    builds callbacks before ``prepare_data`` decodes), so another process can run while
    this one's cache file is half-written."""

    def __init__(self, until: str) -> None:
        save = torch.save

        def paused(obj, f, *args, **kwargs):
            if not (isinstance(obj, dict) and "fingerprint" in obj):  # not the cache payload
                return save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            deadline = time.monotonic() + 600
            while not Path(until).exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            f.write(data[len(data) // 2 :])

        torch.save = paused


class _FillsUp:
    """A file whose ``write`` fails with ``OSError(errno)`` once ``room`` bytes are written."""

    def __init__(self, file, room: int, errno: int) -> None:
        self.file, self.room, self.errno = file, room, errno

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data)[: self.room])
            self.room = 0
            raise OSError(self.errno, os.strerror(self.errno))
        self.room -= len(data)
        return self.file.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def __getattr__(self, name: str):
        return getattr(self.file, name)


class FailSave(Callback):
    """Make every save of ``last.ckpt`` from epoch ``epoch`` on fail with ``OSError(errno)``,
    where the bytes are written: when its temporary file is opened (``at="open"``, e.g.
    EACCES) or after 1000 bytes have been written to it (``at="write"``, e.g. ENOSPC)."""

    def __init__(self, epoch: int, errno: int, at: str = "write") -> None:
        self.epoch, self.errno, self.at = epoch, errno, at
        self.open = builtins.open

    def on_train_epoch_start(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.current_epoch != self.epoch:
            return

        def failing_open(file, mode="r", *args, **kwargs):
            if not Path(str(file)).name.startswith(".last.ckpt.tmp"):
                return self.open(file, mode, *args, **kwargs)
            if self.at == "open":
                raise OSError(self.errno, os.strerror(self.errno), str(file))
            return _FillsUp(self.open(file, mode, *args, **kwargs), 1000, self.errno)

        builtins.open = failing_open

    def teardown(self, *args, **kwargs) -> None:
        builtins.open = self.open

    on_exception = teardown  # Lightning calls no teardown hooks after an exception


class SignalAt(Callback):
    """Send this process ``signal`` (a name) as the training batch of global step ``step``
    starts (``during="train"``; with gradient accumulation the first batch of that step's
    window), as training batch ``batch`` of epoch ``epoch`` starts (``during="batch"``), or
    as validation batch ``batch`` (by default the first) of epoch ``epoch`` starts
    (``during="validation"``), once; writes the ``time.time()`` of sending to ``stamp``.
    ``rank``: only on that global rank."""

    def __init__(
        self,
        signal: str,
        stamp: str,
        step: int = 0,
        epoch: int = 0,
        during: str = "train",
        rank: int | None = None,
        batch: int = 0,
    ) -> None:
        self.signum, self.stamp = globals()["signal"].Signals[signal], Path(stamp)
        self.step, self.epoch, self.during, self.rank = step, epoch, during, rank
        self.batch = batch
        self.sent = False

    def setup(self, trainer: L.Trainer, *args, **kwargs) -> None:
        self.sent = self.rank is not None and trainer.global_rank != self.rank

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            self.stamp.write_text(repr(time.time()))
            os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx) -> None:
        if self.during == "train" and trainer.global_step == self.step:
            self._send()
        at_batch = trainer.current_epoch == self.epoch and batch_idx == self.batch
        if self.during == "batch" and at_batch:
            self._send()

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx, *a):
        at_epoch = trainer.current_epoch == self.epoch and not trainer.sanity_checking
        if self.during == "validation" and at_epoch and batch_idx >= self.batch:
            self._send()


class Killed(BaseException):
    """What ``RaiseAtStep`` raises: a kill, for runs in the test's own process."""


class RaiseAtStep(Callback):
    """Raise ``Killed`` after global step ``step``, as ``KillAtStep`` SIGKILLs: for fits in
    the test's process. Lightning calls the callbacks' ``on_exception`` (no checkpoint
    callback saves there unless told to), so the files are what a kill leaves."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args, **kwargs) -> None:
        if trainer.global_step == self.step:
            raise Killed(self.step)


class NaNBatchOnRank(Callback):
    """Fill the images of the batch of global step ``step`` with NaN on global rank ``rank``
    only, and write the time it did so to ``<out>/injected.txt``."""

    def __init__(self, rank: int, step: int, out: str) -> None:
        self.rank, self.step, self.out = rank, step, Path(out)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, *a):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            batch[0].fill_(float("nan"))
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "injected.txt").write_text(repr(time.time()))


class RecordGroupLRs(Callback):
    """Write each optimizer step's lr of every group, read from the optimizer just before it
    steps, to ``<out>/rank<r>.json`` when training ends: ``[{group name: lr}, ...]``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.steps: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        self.steps.append({group["name"]: group["lr"] for group in optimizer.param_groups})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.steps))


class RecordWeights(Callback):
    """Keep in ``self.after_step`` a copy of the training weights after each optimizer step
    (read back in-process from ``trainer.callbacks``)."""

    def __init__(self) -> None:
        self.after_step: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *a) -> None:
        state = pl_module.state_dict()
        self.after_step.append({k: v.detach().clone() for k, v in state.items()})

"""Seeing, on a CPU, the host reads a training step would make on a GPU.

On a GPU, ``tensor.item()``, ``float(tensor)``, ``int(tensor)`` and ``bool(tensor)`` wait
for the device to finish everything queued (a sync), and ``torch.tensor(python_data,
device=...)`` is a blocking host-to-device copy. On a CPU neither costs anything, but both
still pass through torch's dispatcher, where a ``TorchDispatchMode`` sees them:

- ``aten._local_scalar_dense``: what every ``.item()``, ``float()``, ``int()``, ``bool()``
  of a tensor ends in (a *read*);
- ``aten.lift_fresh``: a tensor made from Python data (``torch.tensor``, ``as_tensor`` of
  a list; a *made* tensor).

``.tolist()``, ``.cpu()`` and ``.numpy()`` are not visible this way on a CPU (they need no
op there); the CUDA test in ``test_host_sync.py`` catches those.

``StepWindows`` (a callback, added with ``--trainer.callbacks+=``) tells the active
``HostReads`` which part of the fit is running, so each read is charged to a window:
``("step", s)`` from the start of the batch of global step ``s`` (the step count before
it) until the next batch starts (so it holds the step, its callbacks and Lightning's
logging after it), ``("augment", s)`` for that batch's ``on_after_batch_transfer`` (crop,
flip, normalisation on the device), ``("loader",)`` for the DataLoader's fetches (host
side by design), and ``("epoch_start", e)``, ``("validation",)``, ``("epoch_end", e)``.
The windows in which the progress bar read the metrics (a redraw) are kept in
``HostReads.redraws``.
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils._python_dispatch import TorchDispatchMode

READ = torch.ops.aten._local_scalar_dense.default
_DISPATCH_FRAMES = ("torch/utils/_python_dispatch", "torch/_dynamo/", "torch/_compile.py")
MADE = torch.ops.aten.lift_fresh.default


class HostReads(TorchDispatchMode):
    """Counts reads and made tensors per window while active (``with HostReads() as r:``)."""

    active: ClassVar[HostReads | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.window: tuple = ("setup",)
        self.reads: Counter = Counter()
        self.made: Counter = Counter()
        self.redraws: set[tuple] = set()
        # "<window kind> <op> at <caller>" -> the frames above that caller, once each
        self.where: dict[str, str] = {}

    def __enter__(self) -> HostReads:
        HostReads.active = self
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        HostReads.active = None
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is READ or func is MADE:
            (self.reads if func is READ else self.made)[self.window] += 1
            frames = [
                f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                for f in traceback.extract_stack()[:-1]
                if not any(part in f.filename for part in _DISPATCH_FRAMES)
            ]
            key = f"{self.window[0]} {func.__name__} at {frames[-1]}"
            if key not in self.where:
                self.where[key] = " <- ".join(reversed(frames[-6:-1]))
        return func(*args, **(kwargs or {}))

    def steps_with(self, counter: Counter, kind: str = "step") -> dict[int, int]:
        """Global step -> count, for the windows of ``kind`` that have any."""
        return {w[1]: n for w, n in counter.items() if w[0] == kind and n}


def _set(window: tuple) -> None:
    if HostReads.active is not None:
        HostReads.active.window = window


class StepWindows(Callback):
    """Marks the windows of a fit for the active ``HostReads`` (see the module docstring)."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dataset = trainer.train_dataloader.dataset
        fetch = dataset.__getitems__

        def fetching(indices):
            reads = HostReads.active
            before = reads.window if reads else None
            _set(("loader",))
            try:
                return fetch(indices)
            finally:
                if before is not None:
                    _set(before)

        dataset.__getitems__ = fetching
        datamodule = trainer.datamodule
        transfer = datamodule.on_after_batch_transfer

        def transferring(batch, dataloader_idx):
            reads = HostReads.active
            before = reads.window if reads else None
            if trainer.training:
                _set(("augment", trainer.global_step))
            try:
                return transfer(batch, dataloader_idx)
            finally:
                if before is not None:
                    _set(before)

        datamodule.on_after_batch_transfer = transferring
        bar = trainer.progress_bar_callback
        if bar is not None:
            get_metrics = bar.get_metrics

            def reading(*args, **kwargs):
                if HostReads.active is not None:
                    HostReads.active.redraws.add(HostReads.active.window)
                return get_metrics(*args, **kwargs)

            bar.get_metrics = reading

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _set(("epoch_start", trainer.current_epoch))

    def on_train_batch_start(self, trainer: Trainer, *args: Any) -> None:
        _set(("step", trainer.global_step))

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _set(("validation",))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        _set(("epoch_end", trainer.current_epoch))


class RankReads(StepWindows):
    """``StepWindows`` with its own ``HostReads``, active from ``on_train_start`` to
    ``on_train_end`` in each process of a DDP fit; writes ``out/rank<global rank>.json``:
    ``{"reads": {step: n}, "made": {step: n}, "where": {...}}`` for the step windows."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.seen: HostReads | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.seen = HostReads().__enter__()
        super().on_train_start(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        seen, self.seen = self.seen, None
        seen.__exit__(None, None, None)
        record = {
            "reads": seen.steps_with(seen.reads),
            "made": seen.steps_with(seen.made),
            "where": seen.where,
        }
        path = Path(self.out) / f"rank{trainer.global_rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

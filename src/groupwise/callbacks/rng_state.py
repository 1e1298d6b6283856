"""The global random states of every rank, saved in each checkpoint and restored on resume.

What Lightning lacks: its checkpoints hold no random state (``_collect_rng_states`` in
lightning/fabric/utilities/seed.py is used only to hand the parent's state to spawned
processes), so a resumed run draws other dropout masks, stochastic-depth choices and
per-sample transforms (``num_workers: 0``) than the run that never stopped, and ends
with other weights. ``RNGStateCheckpoint`` adds, under the checkpoint key ``rng_states``,
one entry per global rank with that rank's

- torch CPU generator (``torch.get_rng_state``),
- CUDA generator of the rank's device (``trainer.strategy.root_device``) when it is a
  CUDA device; other devices' generators are not touched (reading them would create a
  CUDA context on every GPU in every rank),
- numpy global generator (``np.random.get_state``) and Python's ``random`` state,

stored as tensors and plain Python data, so ``torch.load(weights_only=True)`` reads them.

When: the states are read while the checkpoint is written (``on_save_checkpoint``, on
every rank: the ranks' states are gathered to the rank that writes the file, so every
rank must save together, as Lightning's ``Trainer.save_checkpoint`` requires anyway), and
set again in ``on_train_start`` of the resumed ``fit``: after the sanity check (which
Lightning runs inside ``isolate_rng``) and the creation of the training dataloader's
iterator, right before the first resumed training step. The DataModule's loaders draw
their iterator seeds from their own generators (``CIFAR10DataModule``), not from the
global one, so nothing else draws from the global generators between a save at an epoch's
end and the next epoch's first step. A checkpoint written at another point (a mid-epoch
save) is restored at the same place: the states continue as from the last step before the
save. Code that restores at another point can call :func:`restore_rng_states` itself.

A resume with another number of ranks, or a checkpoint without ``rng_states`` (written
before this callback existed), restores nothing and warns that random draws will differ
from the uninterrupted run.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

RNG_STATES_KEY = "rng_states"


def collect_rng_states(device: torch.device | None = None) -> dict[str, Any]:
    """This process's torch CPU, CUDA (of ``device``, if a CUDA device), numpy and Python
    random states, as tensors and plain data."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        states["cuda"] = {"device": device.index, "state": torch.cuda.get_rng_state(device)}
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set this process's random states to ``states`` (from :func:`collect_rng_states`)."""
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"]["state"], states["cuda"]["device"])
    numpy = states["numpy"]
    np.random.set_state(
        (
            numpy["bit_generator"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


class RNGStateCheckpoint(Callback):
    """Save every rank's torch (CPU and its CUDA device), numpy and Python random states in
    each checkpoint (key ``rng_states``, a list indexed by global rank), and restore them
    when ``fit`` resumes, right before the first resumed training step. See the module
    docstring for when the states are read and set."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RNG_STATES_KEY] = _gather(collect_rng_states(trainer.strategy.root_device))

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._to_restore = None
        if trainer.state.fn != "fit":
            return
        saved = checkpoint.get(RNG_STATES_KEY)
        if saved is None:
            rank_zero_warn(
                "the checkpoint holds no random states (it predates RNGStateCheckpoint): "
                "dropout masks and other random draws will differ from the run that wrote it"
            )
        elif len(saved) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint holds the random states of {len(saved)} ranks and this run "
                f"has {trainer.world_size}: they are not restored, so dropout masks and other "
                "random draws will differ from the run that wrote it"
            )
        else:
            self._to_restore = saved[trainer.global_rank]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._to_restore is not None:
            restore_rng_states(self._to_restore)
            self._to_restore = None


def _gather(states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``states``, in rank order (just this one outside distributed runs)."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_initialized()):
        return [states]
    gathered: list[Any] = [None] * distributed.get_world_size()
    distributed.all_gather_object(gathered, states)
    return gathered

"""The template's training without the template: a hand-written torch loop (``plain_fit``)
and the same step as the smallest LightningModule in a bare ``lightning.Trainer``
(``minimal_fit``), both built from the config's parsed objects so they cannot drift apart.
The baselines of the ``parity``, ``step_time`` and ``step_ops`` benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from benchmarks.fits import TrainTimer, cli_args
from groupwise.cli import run
from groupwise.data.batch_augment import keyed_crop_flip, normalize
from groupwise.data.cifar10 import (
    BatchTensorDataset,
    EpochRandomSampler,
    global_seed,
    pass_through_collate,
)


def optimization(model, steps: int) -> tuple[torch.optim.Optimizer, Any, str | None]:
    """The config's optimizer, its scheduler (or None) and the scheduler's interval, built
    as the template's fit builds them (a per-step schedule is ``steps`` long)."""
    optimizer = model.build_optimizer()
    if model.scheduler is None:
        return optimizer, None, None
    interval = model.scheduler_interval
    scheduler = model.build_scheduler(optimizer, steps if interval == "step" else None)
    return optimizer, scheduler, interval


def batch_loss(model, net, batch, seed: int, epoch: int, padding: int) -> torch.Tensor:
    """The step's work in both hand-written variants: keyed crop and flip, normalisation,
    channels_last if the config says so, the net and the loss of the config."""
    images, labels, index = batch
    images = normalize(keyed_crop_flip(images, index, seed, epoch, padding))
    if model.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return F.cross_entropy(net(images), labels, label_smoothing=model.label_smoothing)


def plain_fit(
    config: Path,
    data_dir: Path,
    steps: int,
    root: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int | None = None,
    on_net: Callable[[torch.nn.Module], Any] | None = None,
) -> float:
    """Seconds of the training as a hand-written loop, no Lightning: the net, groups,
    optimizer and schedule come from the same config, built but not run by the CLI."""
    cli = run(cli_args(config, data_dir, steps, root, False, batch_size), run=False)
    model, data = cli.model, cli.datamodule
    seed = global_seed()  # seed_everything of the config, which keys shuffle and crops
    net = model.net
    if model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if on_net is not None:
        on_net(net)
    optimizer, scheduler, interval = optimization(model, steps)
    per_step = interval == "step"
    net.train()
    n, batch_size = len(labels), data.batch_size
    step = epoch = 0
    start = time.perf_counter()
    while step < steps:
        # the permutation of EpochRandomSampler: randperm(n) seeded with seed + epoch
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for first in range(0, n, batch_size):
            index = order[first : first + batch_size]
            # the gather of BatchTensorDataset.__getitems__ (index_select, not images[index])
            batch = images.index_select(0, index), labels.index_select(0, index), index
            loss = batch_loss(model, net, batch, seed, epoch, data.crop_padding)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if per_step:
                scheduler.step()
            step += 1
            if step == steps:
                break
        epoch += 1
        if scheduler is not None and not per_step:
            scheduler.step()
    return time.perf_counter() - start


class MinimalModule(L.LightningModule):
    """The plain loop's step as the smallest LightningModule: no metric, no logging."""

    def __init__(self, cli, steps: int) -> None:
        super().__init__()
        self.net, self.steps, self.source = cli.model.net, steps, cli.model
        self.seed, self.padding = global_seed(), cli.datamodule.crop_padding

    def training_step(self, batch, batch_idx):
        return batch_loss(self.source, self.net, batch, self.seed, self.current_epoch, self.padding)

    def configure_optimizers(self):
        optimizer, scheduler, interval = optimization(self.source, self.steps)
        if scheduler is None:
            return optimizer
        schedule = {"scheduler": scheduler, "interval": interval}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


def minimal_fit(
    config: Path,
    data_dir: Path,
    steps: int,
    root: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int | None = None,
    on_net: Callable[[torch.nn.Module], Any] | None = None,
) -> tuple[float, float]:
    """Seconds of the training as :class:`MinimalModule` in a bare ``lightning.Trainer``
    (everything off, Lightning's default profiler), and the part outside the steps."""
    cli = run(cli_args(config, data_dir, steps, root, False, batch_size), run=False)
    module = MinimalModule(cli, steps)
    if cli.model.channels_last:
        module.net.to(memory_format=torch.channels_last)
    if on_net is not None:
        on_net(module.net)
    dataset = BatchTensorDataset(images, labels)
    loader = DataLoader(
        dataset,
        batch_size=cli.datamodule.batch_size,
        sampler=EpochRandomSampler(dataset, global_seed()),
        collate_fn=pass_through_collate,
    )
    timer = TrainTimer()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="32-true", max_steps=steps,
        limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        default_root_dir=root,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step != steps:
        raise RuntimeError(f"minimal Lightning ran {trainer.global_step} steps, not {steps}")
    return timer.end - timer.start, timer.outside_steps

"""Per-group gradient norm, parameter norm and update ratio in TensorBoard, every N steps.

What the libraries give, and what they lack:

- Lightning's ``LearningRateMonitor`` logs each named group's *settings* (lr, momentum,
  weight decay), not what its step did.
- Lightning's ``lightning.pytorch.utilities.grad_norm(module, norm_type)`` (used from
  ``on_before_optimizer_step``) gives the gradient norm of every *parameter* and one
  *total* over the whole module: nothing per optimizer group, no parameter norms and no
  update sizes, and it turns each parameter's norm into a Python number (one host sync per
  parameter, ``torch.tensor`` of a list of tensors) on every call.
- torch's ``torch.nn.utils.get_total_norm(tensors)`` computes the norm of a list of
  tensors taken together (one fused ``_foreach_norm``, no host sync): used here for every
  norm.

So this callback keeps only the grouping and the two quantities nobody logs. For every
named optimizer param group, every ``every_n_steps`` optimizer steps (at steps 0, N, 2N,
... counted like ``trainer.global_step``):

- ``groups/<group>/grad_norm``: L2 norm of the group's gradients, as the optimizer sees
  them: after backward and, under DDP, after the gradient all-reduce (so every rank has
  the same value), after AMP unscaling, *before* gradient clipping; it equals the L2 norm
  of the per-parameter norms ``grad_norm`` gives for the group's parameters, and the
  groups' norms combine to its total (``tests/test_group_stats.py``);
- ``groups/<group>/param_norm``: L2 norm of the group's parameters just before the step;
- ``groups/<group>/update_ratio``: ``||w_after - w_before|| / ||w_before||`` of that step
  (lr times the update direction, relative to the weights; ~1e-3 is the usual healthy
  order of magnitude for SGD).

The tags start with ``groups/<group>/`` so TensorBoard's scalar dashboard puts each group's
three curves together in one section (it sections tags by their first path component,
``groups``, and the search box ``groups/features`` shows one group).

Off the hot path: on other steps the hooks only compare two integers. On a logging step
the callback copies the group's parameters once (one extra copy of the trainable
weights, freed after the step) and makes one host sync. Only global rank zero computes and
logs: under DDP the gradients and weights are identical on every rank at these hooks.

Hook order (Lightning 2.x, ``Precision._wrap_closure``): the closure runs forward and
backward (DDP's reducer finishes the all-reduce inside backward), then
``on_before_optimizer_step``, then gradient clipping, then ``optimizer.step``; and
``on_train_batch_end`` after the step.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.nn.utils import get_total_norm as _norm  # L2 norm of tensors taken together

from groupwise.errors import ConfigError
from groupwise.optim.param_groups import group_name

STATS = ("grad_norm", "param_norm", "update_ratio")


class GroupStats(Callback):
    """Log each named param group's gradient norm, parameter norm and update ratio.

    Args:
        every_n_steps: log at optimizer steps 0, N, 2N, ... (``trainer.global_step``
            before the step).
        prefix: the first component of every tag (``<prefix>/<group>/grad_norm``).
    """

    def __init__(self, every_n_steps: int = 50, prefix: str = "groups") -> None:
        if every_n_steps < 1:
            raise ConfigError(f"every_n_steps must be a positive integer, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.prefix = prefix
        self._step: int | None = None  # the step being measured, between the two hooks
        self._before: list[dict[str, Any]] = []
        self.last_metrics: dict[str, float] = {}  # the latest logged values and their step

    def tag(self, group: str, stat: str) -> str:
        """The tag of one group's statistic (``stat`` is one of ``STATS``)."""
        return f"{self.prefix}/{group}/{stat}"

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or not trainer.is_global_zero:
            return
        self._step = step
        self._before = []
        for index, group in enumerate(optimizer.param_groups):
            params = [p for p in group["params"] if p.requires_grad]
            grads = [p.grad for p in params if p.grad is not None]
            self._before.append(
                {
                    "name": group_name(group, index),
                    "params": params,
                    "copies": [p.detach().clone() for p in params],
                    "grad_norm": _norm(grads) if grads else None,
                }
            )

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # With gradient accumulation this runs on batches that did not step: the pending
        # measurement waits for the batch whose step it measured (global_step moved on).
        if self._step is None or trainer.global_step <= self._step:
            return
        step, self._step = self._step, None
        names, values = [], []
        for group in self._before:
            param_norm = _norm(group["copies"])
            delta = _norm(
                [p.detach() - c for p, c in zip(group["params"], group["copies"], strict=True)]
            )
            names += [
                self.tag(group["name"], "param_norm"),
                self.tag(group["name"], "update_ratio"),
            ]
            values += [param_norm, delta / param_norm]
            if group["grad_norm"] is not None:
                names.append(self.tag(group["name"], "grad_norm"))
                values.append(group["grad_norm"])
        self._before = []
        metrics = dict(zip(names, torch.stack(values).tolist(), strict=True))  # one sync
        self.last_metrics = {"step": step, **metrics}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

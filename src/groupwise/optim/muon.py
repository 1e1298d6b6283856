"""Muon for weight matrices and convolution filters, refusing every other parameter.

Muon (Keller Jordan, https://kellerjordan.github.io/posts/muon/) replaces each weight's
momentum update by its nearest semi-orthogonal matrix, computed with a few Newton-Schulz
iterations. A convolution filter of shape ``(out_channels, in_channels, kh, kw)`` is
updated as the matrix ``(out_channels, in_channels * kh * kw)`` (the filter flattened, as
``airbench94_muon`` does), then reshaped back.

What is used, and what is written here:

- ``torch.optim.Muon`` (torch >= 2.9) takes only 2-D parameters, so it cannot train conv
  filters; it is the right choice for groups of 2-D weights only.
- ``timm.optim.Muon`` flattens filters (``conv_mode="flatten"``), but it silently steps
  every parameter it finds unsuitable (1-D biases and norm weights, small or very
  rectangular matrices) with AdamW instead, and its groups carry AdamW's options too.
  The update here is timm's own functional ``timm.optim.muon.muon`` (momentum, Nesterov,
  Newton-Schulz in bfloat16, decoupled weight decay, lr adjustment by shape), called in
  flatten mode on every parameter of the group, with no fallback.
- Written here: the refusal of parameters with fewer than 2 dimensions at construction
  (and in ``add_param_group``), naming the parameter and its shape; defaults equal to
  ``torch.optim.Muon``'s; and ``normalize_weights``, airbench94_muon's rescaling of each
  filter to norm ``sqrt(out_channels)`` before every step, which neither library has.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.optim.muon import muon as timm_muon
from torch.optim import Optimizer

# Keller Jordan's quintic coefficients, torch.optim.Muon's default (timm's "original").
DEFAULT_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "rms_to_rms")
Coefficients = str | Sequence[float] | Sequence[Sequence[float]]


class MuonShapeError(ValueError):
    """A parameter with fewer than 2 dimensions was given to Muon.

    ``index`` is the parameter's position in its group's ``params`` and ``group`` the
    group's name, so code that knows the parameters' names can name it.
    """

    def __init__(self, message: str, group: str | None, index: int, shape: tuple[int, ...]):
        super().__init__(message)
        self.group, self.index, self.shape = group, index, shape


class Muon(Optimizer):
    """Muon for 2-D weights and conv filters (flattened to ``(out_channels, -1)``).

    Per step and parameter ``w`` with gradient ``g`` (timm's update; the same as
    ``torch.optim.Muon`` on 2-D weights)::

        buf = momentum * buf + (1 - momentum) * g
        u = (1 - momentum) * g + momentum * buf if nesterov else buf
        w = w * (1 - lr * weight_decay)
        w = w - lr * scale * reshape(NS(u.reshape(len(u), -1)))

    where ``NS`` is ``ns_steps`` Newton-Schulz iterations (in bfloat16) of ``u / ||u||``
    and ``scale`` follows ``adjust_lr_fn`` on the flattened shape ``(A, B)``: ``None`` 1,
    ``"original"`` ``sqrt(max(1, A / B))``, ``"match_rms_adamw"`` ``0.2 sqrt(max(A, B))``,
    ``"rms_to_rms"`` ``sqrt(A / B)``. The momentum buffer of a parameter is created at its
    first step with a gradient: a parameter whose ``grad`` is ``None`` is skipped.

    Args:
        params: parameters or param groups; every parameter needs at least 2 dimensions.
        lr: learning rate (torch.optim.Muon's default).
        weight_decay: decoupled weight decay, multiplied by ``lr``.
        momentum: momentum factor in [0, 1).
        nesterov: Nesterov momentum.
        ns_steps: Newton-Schulz iterations.
        ns_coefficients: the iteration's ``(a, b, c)``, a list of them (one per step, the
            last repeated), or a timm preset name (``"original"``, ``"quintic"``,
            ``"polar_express"``).
        eps: added to the norm that ``u`` is divided by.
        adjust_lr_fn: lr scale by shape, see above.
        normalize_weights: before each step, rescale each parameter to norm
            ``sqrt(out_channels)`` (airbench94_muon's weight normalization, for weights
            followed by a norm layer, whose output does not depend on their scale).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_coefficients: str
        | Sequence[float]
        | Sequence[Sequence[float]] = DEFAULT_NS_COEFFICIENTS,
        eps: float = 1e-7,
        adjust_lr_fn: str | None = "original",
        normalize_weights: bool = False,
    ) -> None:
        if lr < 0:
            raise ValueError(f"Muon: lr must be >= 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"Muon: weight_decay must be >= 0, got {weight_decay}")
        if not 0 <= momentum < 1:
            raise ValueError(f"Muon: momentum must be in [0, 1), got {momentum}")
        if ns_steps < 1:
            raise ValueError(f"Muon: ns_steps must be >= 1, got {ns_steps}")
        if adjust_lr_fn not in ADJUST_LR_FNS:
            raise ValueError(
                f"Muon: adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {adjust_lr_fn!r}"
            )
        defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "ns_coefficients": ns_coefficients,
            "eps": eps,
            "adjust_lr_fn": adjust_lr_fn,
            "normalize_weights": normalize_weights,
        }
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; ``MuonShapeError`` for a parameter with fewer than 2 dimensions."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        for index, param in enumerate(params):
            name, tensor = param if isinstance(param, tuple) else (None, param)
            if isinstance(tensor, torch.Tensor) and tensor.ndim < 2:
                group = param_group.get("name")
                what = repr(name) if name else f"parameter #{index} of group {group!r}"
                raise MuonShapeError(
                    f"Muon takes only weight matrices and conv filters (2 or more "
                    f"dimensions); {what} has shape {tuple(tensor.shape)}. Give biases and "
                    "norm weights to another optimizer (e.g. torch.optim.SGD).",
                    group,
                    index,
                    tuple(tensor.shape),
                )
        super().add_param_group({**param_group, "params": params})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                params.append(param)
                grads.append(param.grad)
                buffers.append(state["momentum_buffer"])
            if not params:
                continue
            if group["normalize_weights"]:
                for param in params:
                    param.mul_(math.sqrt(len(param)) / param.norm())
            timm_muon(
                params,
                grads,
                buffers,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                nesterov=group["nesterov"],
                ns_steps=group["ns_steps"],
                ns_coefficients=group["ns_coefficients"],
                eps=group["eps"],
                safety_factor=1.0,
                adjust_lr_fn=group["adjust_lr_fn"],
                conv_mode="flatten",
                normalize_spatial=False,
                scale_eps=False,
            )
        return loss

"""SGD with separate L1 and L2 weight decay, per parameter group.

What ``torch.optim.SGD`` lacks: its ``weight_decay`` is L2 only. Here the gradient is

    g = grad + weight_decay_l2 * w + weight_decay_l1 * sign(w)

and then exactly ``torch.optim.SGD``'s momentum / dampening / Nesterov rule follows (its
``_single_tensor_sgd``; the momentum buffer starts as ``g`` on the first step). With
``weight_decay_l1=0`` it takes the same steps as ``torch.optim.SGD(weight_decay=l2)``.
Use it from YAML as ``class_path: groupwise.optim.SGDL1L2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from groupwise.errors import ConfigError

NONNEGATIVE = ("lr", "momentum", "weight_decay_l1", "weight_decay_l2")


class SGDL1L2(Optimizer):
    """SGD (optionally with momentum or Nesterov momentum) plus L1 and L2 weight decay.

    Args:
        params: parameters or parameter groups (dicts that may set any option below).
        lr: learning rate.
        momentum: momentum factor, 0 for none.
        dampening: dampening for momentum, as in ``torch.optim.SGD``.
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        weight_decay_l1: coefficient of the L1 penalty's subgradient ``sign(w)``.
        weight_decay_l2: coefficient of the L2 penalty's gradient ``w``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay_l1: float = 0.0,
        weight_decay_l2: float = 0.0,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "nesterov": nesterov,
            "weight_decay_l1": weight_decay_l1,
            "weight_decay_l2": weight_decay_l2,
        }
        _check_options(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (missing options take the defaults) and check its options."""
        super().add_param_group(param_group)
        _check_options(self.param_groups[-1])

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One optimization step; returns the closure's loss (``None`` without a closure)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: Tensor, group: Mapping[str, Any]) -> None:
        grad = param.grad
        if grad.is_sparse:
            raise RuntimeError("SGDL1L2 does not support sparse gradients")
        if group["weight_decay_l2"] != 0:
            grad = grad.add(param, alpha=group["weight_decay_l2"])
        if group["weight_decay_l1"] != 0:
            grad = grad.add(param.sign(), alpha=group["weight_decay_l1"])
        momentum = group["momentum"]
        if momentum != 0:
            state = self.state[param]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        param.add_(grad, alpha=-group["lr"])


def _check_options(options: Mapping[str, Any]) -> None:
    """The checks of ``torch.optim.SGD``, applied to the defaults and to every group."""
    for key in NONNEGATIVE:
        if options[key] < 0.0:
            raise ConfigError(f"Invalid {key} value: {options[key]} (must be >= 0)")
    if options["nesterov"] and (options["momentum"] <= 0 or options["dampening"] != 0):
        raise ConfigError(
            "Nesterov momentum requires a momentum and zero dampening; got "
            f"momentum={options['momentum']}, dampening={options['dampening']}"
        )

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
  The update here is timm's single-tensor Muon update (momentum, Nesterov, decoupled
  weight decay, lr adjustment by shape) in flatten mode on every parameter of the group,
  with no fallback, built from timm's public pieces: ``zeropower_via_newtonschulz`` (the
  iteration, with its ``dtype``), ``get_lr_scale`` and ``resolve_ns_coefficients``. The
  preset names of the coefficients are timm's private ``_COEFFICIENTS`` (read, never
  changed; ``tests/test_muon.py`` fails if timm renames it). timm's functional ``muon`` is
  not called because it always iterates in bfloat16.
- Written here: the refusal of parameters with fewer than 2 dimensions at construction
  (and in ``add_param_group``), naming the parameter and its shape; defaults equal to
  ``torch.optim.Muon``'s; ``normalize_weights``, airbench94_muon's rescaling of each
  filter to norm ``sqrt(out_channels)`` before every step, which neither library has; and
  ``ns_dtype``, the iteration's dtype by what the device computes fast (both libraries
  iterate in bfloat16 everywhere, which a CPU without bfloat16 instructions emulates at
  18-48x float32's time on an AVX2-only AMD EPYC: ``scripts/bench_muon_ns.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from timm.optim import muon as timm_muon
from timm.optim.muon import get_lr_scale, resolve_ns_coefficients, zeropower_via_newtonschulz
from torch.optim import Optimizer

# timm's coefficient presets by name ("original", "quintic", "polar_express", ...): a
# private table, only read; should a timm release rename it, only preset names fail (as
# unknown presets), and tests/test_muon.py says so
NS_PRESETS: Mapping[str, Any] = getattr(timm_muon, "_COEFFICIENTS", {})

# Keller Jordan's quintic coefficients, torch.optim.Muon's default (timm's "original").
DEFAULT_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "rms_to_rms")
NS_DTYPES = ("auto", "bfloat16", "float32")
Coefficients = str | Sequence[float] | Sequence[Sequence[float]]
# What torch.cpu.get_capabilities() calls the instructions that multiply bfloat16 matrices
# in hardware: x86's AVX512-BF16 and AMX-BF16, ARM's BF16 extension and SVE's.
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_has_fast_bfloat16(capabilities: Mapping[str, Any] | None = None) -> bool:
    """Whether the CPU multiplies bfloat16 matrices in hardware: one of
    ``CPU_BFLOAT16_FLAGS`` in ``capabilities`` (default: ``torch.cpu.get_capabilities()``).

    Not ``torch.backends.cpu.get_cpu_capability()``: its ``"AVX512"`` means AVX-512 F, BW,
    VL and DQ, which a CPU has without AVX512-BF16 (the Intel Xeon of this project's CI),
    and its ``"AVX2"`` hides an AVX2 CPU's AMX or an ARM CPU's BF16."""
    capabilities = torch.cpu.get_capabilities() if capabilities is None else capabilities
    return any(capabilities.get(flag) for flag in CPU_BFLOAT16_FLAGS)


def cuda_has_fast_bfloat16(device: torch.device) -> bool:
    """Whether the GPU ``device`` computes in bfloat16 natively (compute capability 8.0 or
    newer, or ROCm): ``torch.cuda.is_bf16_supported`` without emulation, for that device."""
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def auto_ns_dtype(device: torch.device) -> torch.dtype:
    """The Newton-Schulz dtype of ``ns_dtype: auto`` on ``device``: bfloat16 where the
    device computes it fast (``cuda_has_fast_bfloat16``, ``cpu_has_fast_bfloat16``),
    float32 otherwise (other device types too). It depends on the hardware alone, so every
    rank of a run on identical machines picks the same."""
    if device.type == "cuda":
        fast = cuda_has_fast_bfloat16(device)
    elif device.type == "cpu":
        fast = cpu_has_fast_bfloat16()
    else:
        fast = False
    return torch.bfloat16 if fast else torch.float32


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

    where ``NS`` is ``ns_steps`` Newton-Schulz iterations (in ``ns_dtype``) of ``u / ||u||``
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
        ns_dtype: the Newton-Schulz iteration's dtype: ``"auto"`` bfloat16 where the
            parameters' device computes it fast (``auto_ns_dtype``: a CUDA GPU of compute
            capability 8.0 or newer, a CPU with AVX512-BF16, AMX or ARM BF16), float32
            otherwise; ``"bfloat16"`` (timm's and ``torch.optim.Muon``'s choice everywhere)
            or ``"float32"`` to override it. ``auto`` is decided once per device by each
            optimizer, at its first use there (the group table or the first step). Not
            state: no checkpoint records it, so a resume on another machine may iterate
            in another dtype.
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
        ns_dtype: Literal["auto", "bfloat16", "float32"] = "auto",
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
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"Muon: ns_dtype must be one of {NS_DTYPES}, got {ns_dtype!r}")
        # an attribute, not a group option: it is no state, and a checkpoint without it
        # (from before the option) resumes under the same group options
        self.ns_dtype = ns_dtype
        self._auto_ns_dtypes: dict[torch.device, torch.dtype] = {}
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

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "ns_dtype": self.ns_dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("ns_dtype", "auto")
        self.__dict__.setdefault("_auto_ns_dtypes", {})

    def ns_dtype_on(self, device: torch.device) -> torch.dtype:
        """The Newton-Schulz dtype of this optimizer's parameters on ``device``: the
        configured one, or ``auto_ns_dtype(device)``, decided at the first call per device
        and kept."""
        if self.ns_dtype != "auto":
            return getattr(torch, self.ns_dtype)
        if device not in self._auto_ns_dtypes:
            self._auto_ns_dtypes[device] = auto_ns_dtype(device)
        return self._auto_ns_dtypes[device]

    def describe_group(self, group: Mapping[str, Any]) -> str:
        """What the group table shows beside the class name: the iteration's dtype on the
        group's devices, e.g. ``"ns float32"``."""
        dtypes = {str(self.ns_dtype_on(p.device)) for p in group["params"]}
        names = sorted(d.removeprefix("torch.") for d in dtypes) or [self.ns_dtype]
        return "ns " + "/".join(names)

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
            coefficients = resolve_ns_coefficients(group["ns_coefficients"], NS_PRESETS)
            lr, momentum = group["lr"], group["momentum"]
            for param, grad, buffer in zip(params, grads, buffers, strict=True):
                # timm's _single_tensor_muon, conv_mode "flatten", with the dtype chosen
                param.mul_(1 - lr * group["weight_decay"])
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer.clone()
                matrix = update.reshape(len(update), -1)
                orthogonal = zeropower_via_newtonschulz(
                    matrix,
                    group["ns_steps"],
                    coefficients,
                    eps=group["eps"],
                    dtype=self.ns_dtype_on(param.device),
                )
                scale = (
                    get_lr_scale(matrix.shape, group["adjust_lr_fn"])
                    if group["adjust_lr_fn"]
                    else 1.0
                )
                param.add_(orthogonal.reshape(param.shape), alpha=-lr * scale)
        return loss

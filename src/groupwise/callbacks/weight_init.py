"""Weight initialisation by module type, as a callback: rules for conv, linear and norm layers,
an optional zero-init of the last norm of each residual block, names to leave untouched.

Add it to a run with::

    trainer:
      callbacks:
        - class_path: groupwise.callbacks.WeightInit
          init_args:
            conv: kaiming_normal          # fan_out, relu (torchvision's ResNet init)
            linear: normal                # std `normal_std`
            zero_last_norm_in_residual: true
            skip: ["backbone.0*"]         # fnmatch on module names relative to model.net
            seed: 7                       # same weights on every rank, whatever ran before

What this adds to torch: the rules are applied through ``net.named_modules()`` with the
``torch.nn.init`` functions; nothing here re-implements an init scheme.

When it runs: in the callback ``setup`` hook of ``fit``. Lightning (``Trainer._run``) calls the
callbacks' ``setup`` in ``_call_setup_hook`` (callbacks first, then the LightningModule's
``setup``), then ``configure_model``, then restores a ``--ckpt_path`` checkpoint into the model
and only then ``strategy.setup``, which moves the model, wraps it in DDP and builds the
optimizers. So the optimizer sees the initialised tensors and every rank has them before DDP's
first broadcast.

What it never touches: ``validate`` / ``test`` / ``predict``; a ``fit`` with
``trainer.ckpt_path`` set when ``setup`` runs; a model with ``init_weights`` set (the
Classifier's weights-only load, done in its own ``setup`` right after this one). Lightning sets
``trainer.ckpt_path`` from ``fit(ckpt_path=...)`` (what ``groupwise fit --ckpt_path`` passes)
only when it restores, which is after ``setup``: such a resume is initialised and then
overwritten by the checkpoint's weights (every parameter the init touches is in the model's
state dict), and ``on_fit_start`` says so and empties the report.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from groupwise.errors import ConfigError
from groupwise.optim.param_groups import format_table

Scheme = Literal[
    "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform", "orthogonal", "normal"
]
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd,)
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Bilinear)
# BatchNorm*, SyncBatchNorm and InstanceNorm* derive from _NormBase.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
RULES = ("conv", "linear", "norm", "zero_last_norm")


class WeightInit(Callback):
    """Initialise ``pl_module.net`` by module type when ``fit`` sets up (see the module docstring).

    Args:
        conv: scheme for the weights of convolutions (``nn.Conv*d``, transposed too); their
            biases are set to 0. ``kaiming_*`` use ``mode="fan_out"``, ``nonlinearity="relu"``;
            ``normal`` uses ``normal_std``. ``None`` leaves convolutions as they are.
        linear: scheme for ``nn.Linear`` weights, biases set to 0; ``None`` leaves them.
        normal_std: standard deviation of the ``normal`` scheme.
        norm: set the affine weight of every norm layer (BatchNorm*, GroupNorm, LayerNorm,
            InstanceNorm*) to 1 and its bias to 0.
        zero_last_norm_in_residual: set to 0 the weight of the last norm layer among the
            direct children of every module whose class is in ``residual_blocks`` (``bn2`` of a
            ResNet BasicBlock, ``bn3`` of a Bottleneck; the shortcut's norm sits inside a
            ``Sequential`` child, so it is not one of them): each block starts as the identity.
        residual_blocks: class names of residual blocks, for ``zero_last_norm_in_residual``.
        skip: fnmatch patterns on module names relative to the net; a module whose name or
            any parent's name matches is left untouched (e.g. ``["backbone"]`` for a pretrained
            backbone, ``["backbone.0*"]`` for the stem). Every name counts: a module shared by
            two attributes is skipped by either. Skipping is by tensor: a weight a skipped
            module shares with another module (tied weights) is left untouched there too. A
            pattern that matches nothing is an error.
        seed: initialise under ``torch.random.fork_rng`` seeded with this, so the weights are
            the same on every rank and whatever used the global RNG before, and the global RNG
            is left as it was. ``None``: draw from the global RNG, as the net's constructor did.
        log_histograms: at ``on_fit_start``, add a histogram ``init/<group>`` (step 0) of each
            optimizer parameter group's initialised weights to every TensorBoard logger.
    """

    def __init__(
        self,
        conv: Scheme | None = "kaiming_normal",
        linear: Scheme | None = "normal",
        normal_std: float = 0.01,
        norm: bool = True,
        zero_last_norm_in_residual: bool = False,
        residual_blocks: list[str] | None = None,
        skip: list[str] | None = None,
        seed: int | None = None,
        log_histograms: bool = True,
    ) -> None:
        self.conv = conv
        self.linear = linear
        self.normal_std = normal_std
        self.norm = norm
        self.zero_last_norm_in_residual = zero_last_norm_in_residual
        self.residual_blocks = list(residual_blocks or ["BasicBlock", "Bottleneck"])
        self.skip = list(skip or [])
        self.seed = seed
        self.log_histograms = log_histograms
        self.report: dict[str, int] = {}
        self.touched: dict[str, list[str]] = {}
        self.applied = False
        self._protected: set[int] = set()  # ids of the tensors of skipped modules

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if trainer.ckpt_path:
            rank_zero_info(
                f"WeightInit: resuming from {trainer.ckpt_path}; weights left as restored"
            )
            return
        if getattr(pl_module, "init_weights", None):
            rank_zero_info(
                f"WeightInit: the model loads its weights from {pl_module.init_weights}; "
                "weights left as loaded"
            )
            return
        self.touched = self.apply(getattr(pl_module, "net", pl_module))
        self.report = {rule: len(names) for rule, names in self.touched.items()}
        self.applied = True
        rows = [{"rule": rule, "modules": count} for rule, count in self.report.items()]
        seed = "the global RNG" if self.seed is None else f"seed {self.seed}"
        rank_zero_info(f"WeightInit ({seed}):\n{format_table(rows)}")

    def apply(self, net: nn.Module) -> dict[str, list[str]]:
        """Initialise ``net`` in place; return the names of the modules each rule touched."""
        with _rng(self.seed):
            return self._apply(net)

    @torch.no_grad()
    def _apply(self, net: nn.Module) -> dict[str, list[str]]:
        # every name of every module: a module shared by two attributes is listed by
        # named_modules() under its first name only
        names = [name for name, _ in net.named_modules(remove_duplicate=False) if name]
        unused = [p for p in self.skip if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unused:
            examples = [name for name in names if name.count(".") < 2]
            raise ConfigError(
                f"WeightInit: skip patterns {unused} match no module of the net; "
                f"module names look like {examples[:12]}"
            )
        self._protected = _skipped_tensors(net, self._skipped)
        modules = [(name, module) for name, module in net.named_modules() if name]
        kept = [(name, module) for name, module in modules if not self._skipped(name)]
        touched: dict[str, list[str]] = {rule: [] for rule in RULES}
        for name, module in kept:
            if isinstance(module, CONV_TYPES) and self.conv is not None:
                if self._init(module, self.conv):
                    touched["conv"].append(name)
            elif isinstance(module, LINEAR_TYPES) and self.linear is not None:
                if self._init(module, self.linear):
                    touched["linear"].append(name)
            elif isinstance(module, NORM_TYPES) and self.norm:
                ones = self._set(module, "weight", nn.init.ones_)
                if self._set(module, "bias", nn.init.zeros_) or ones:
                    touched["norm"].append(name)
        if self.zero_last_norm_in_residual:
            touched["zero_last_norm"] = self._zero_last_norms(kept)
        return touched

    def _set(self, module: nn.Module, name: str, init: Callable[[torch.Tensor], Any]) -> bool:
        """``init`` the tensor ``module.<name>`` unless it is missing, lazy or belongs to a
        skipped module too (a tied weight); whether it did."""
        tensor = getattr(module, name, None)
        if not _has(module, name) or id(tensor) in self._protected:
            return False
        init(tensor)
        return True

    def _skipped(self, name: str) -> bool:
        parts = name.split(".")
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes for pattern in self.skip)

    def _init(self, module: nn.Module, scheme: Scheme) -> bool:
        """The scheme on the weight, zeros on the bias; whether it set either."""
        if not _has(module, "weight"):  # a lazy module before its first forward
            return False
        weight = self._set(module, "weight", lambda w: _SCHEMES[scheme](w, self.normal_std))
        return self._set(module, "bias", nn.init.zeros_) or weight

    def _zero_last_norms(self, kept: Sequence[tuple[str, nn.Module]]) -> list[str]:
        blocks = [(n, m) for n, m in kept if type(m).__name__ in self.residual_blocks]
        if not blocks:
            raise ConfigError(
                f"WeightInit: zero_last_norm_in_residual found no module of the classes "
                f"{self.residual_blocks} (outside skip); set residual_blocks to the class names "
                f"of the net's residual blocks"
            )
        zeroed = []
        for name, block in blocks:
            norms = [
                (child, m)
                for child, m in block.named_children()
                if isinstance(m, NORM_TYPES) and _has(m, "weight")
            ]
            if not norms:
                raise ConfigError(f"WeightInit: residual block {name!r} has no norm layer child")
            child, last = norms[-1]
            if self._set(last, "weight", nn.init.zeros_):
                zeroed.append(f"{name}.{child}")
        return zeroed

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.applied:
            return
        if trainer.ckpt_path:  # set by now: Lightning restored the checkpoint after setup
            rank_zero_info(
                f"WeightInit: the weights were restored from {trainer.ckpt_path}, replacing "
                "this initialisation"
            )
            self.report, self.touched, self.applied = {}, {}, False
            return
        if not self.log_histograms or not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for optimizer in trainer.optimizers if loggers else []:
            for index, group in enumerate(optimizer.param_groups):
                values = torch.cat([p.detach().flatten().float().cpu() for p in group["params"]])
                for logger in loggers:
                    tag = f"init/{group.get('name', f'pg{index}')}"
                    logger.experiment.add_histogram(tag, values, 0)


def _skipped_tensors(net: nn.Module, skipped: Callable[[str], bool]) -> set[int]:
    """The ids of the parameters and buffers of every module that has a skipped name: a
    weight tied to another module stays as it is through that module too (torch's
    ``named_modules`` and ``named_parameters`` list a shared module or tensor only once)."""
    return {
        id(tensor)
        for name, module in net.named_modules(remove_duplicate=False)
        if name and skipped(name)
        for tensor in [*module.parameters(), *module.buffers()]
    }


def _has(module: nn.Module, name: str) -> bool:
    value = getattr(module, name, None)
    return isinstance(value, torch.Tensor) and not isinstance(
        value, nn.parameter.UninitializedParameter
    )


@contextmanager
def _rng(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    # fork_rng saves and restores the CPU RNG and, when CUDA is initialised, the CUDA ones.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


_SCHEMES: dict[str, Callable[[torch.Tensor, float], Any]] = {
    "kaiming_normal": lambda w, std: nn.init.kaiming_normal_(
        w, mode="fan_out", nonlinearity="relu"
    ),
    "kaiming_uniform": lambda w, std: nn.init.kaiming_uniform_(
        w, mode="fan_out", nonlinearity="relu"
    ),
    "xavier_normal": lambda w, std: nn.init.xavier_normal_(w),
    "xavier_uniform": lambda w, std: nn.init.xavier_uniform_(w),
    "orthogonal": lambda w, std: nn.init.orthogonal_(w),
    "normal": lambda w, std: nn.init.normal_(w, 0.0, std),
}

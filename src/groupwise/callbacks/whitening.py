"""A data-dependent init as a callback: set a 2-D convolution's filters to whiten its
patches of the first training images, once per run (airbench94's ``init_whiten``).

Add it to a run with::

    trainer:
      callbacks:
        - class_path: groupwise.callbacks.WhiteningInit
          init_args:
            module: whiten      # the conv, by its name relative to model.net
            images: 5000        # training images the patch covariance is estimated from

What it does: at ``on_fit_start`` of a fresh ``fit`` (Lightning calls it after the setup
hooks, after a ``--ckpt_path`` restore and after the strategy moved the model to its device
and wrapped it, before the sanity check and the first training step), rank 0 takes
``images`` training images from the DataModule (``train_sample``: normalised as training
batches are, not augmented, a sample fixed by ``data.seed``), computes the filters with
``groupwise.nets.whitening_filters`` on the model's device and broadcasts them
(``trainer.strategy.broadcast``), and every rank copies them into the conv's weight: all
ranks hold the same filters. The filters are part of the model's state dict, so every
checkpoint holds them, and this callback's state (``state_dict``) records that it ran, on
how many images, with which ``eps``.

What it never does: recompute on a resume (``--ckpt_path``: the filters are restored with
the weights), on a run that loads ``model.init_weights``, or in ``validate`` / ``test`` /
``predict``. Lightning has no data-dependent init; torch has the linear algebra
(``torch.linalg.eigh``); what is written here is when it runs, where the images come from,
and the broadcast.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from groupwise.errors import ConfigError, did_you_mean
from groupwise.nets.airbench import WHITEN_EPS, whitening_filters


class WhiteningInit(Callback):
    """Set ``model.net.<module>``'s filters from training images when a fresh ``fit``
    starts (see the module docstring).

    Args:
        module: the ``nn.Conv2d`` whose weight is set, by its name relative to the
            LightningModule's ``net`` (to the LightningModule itself where it has none). Its
            ``out_channels`` must be ``2 * in_channels * kh * kw``: each eigenvector of the
            patch covariance and its negative (airbench94: 3 channels, 2x2, 24 filters).
        images: how many training images the patch covariance is estimated from
            (airbench94: 5,000).
        eps: added to each eigenvalue before its square root divides the eigenvector
            (airbench94: 5e-4).
    """

    def __init__(self, module: str = "whiten", images: int = 5000, eps: float = WHITEN_EPS):
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise ConfigError(f"WhiteningInit: images must be an int >= 1, got {images!r}")
        if not eps >= 0:
            raise ConfigError(f"WhiteningInit: eps must be >= 0, got {eps!r}")
        self.module = module
        self.images = images
        self.eps = eps
        self.computed = False  # in this run or, as the checkpoint records, in the one resumed

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module=self.module)

    def check_net(self, net: nn.Module) -> None:
        """Raise ``ConfigError`` unless ``module`` names a 2-D convolution of ``net`` whose
        shape whitening filters fit (called before ``fit`` writes anything, and again at
        the start of training)."""
        self._conv(net)

    def _conv(self, net: nn.Module) -> nn.Conv2d:
        names = [name for name, _ in net.named_modules() if name]
        try:
            conv = net.get_submodule(self.module)
        except AttributeError:
            raise ConfigError(
                f"WhiteningInit: the net has no module {self.module!r}"
                f"{did_you_mean(self.module, names)}; its modules are {names[:12]}"
            ) from None
        if not isinstance(conv, nn.Conv2d):
            raise ConfigError(
                f"WhiteningInit: module {self.module!r} is a {type(conv).__name__}, not an"
                " nn.Conv2d"
            )
        kh, kw = conv.kernel_size
        wanted = 2 * conv.in_channels * kh * kw
        if conv.out_channels != wanted or conv.groups != 1:
            raise ConfigError(
                f"WhiteningInit: module {self.module!r} has {conv.out_channels} filters (groups"
                f" {conv.groups}); whitening its {kh}x{kw} patches of {conv.in_channels}"
                f" channels takes {wanted} (each eigenvector and its negative), groups 1"
            )
        return conv

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.ckpt_path:
            if not self.computed:
                rank_zero_warn(
                    f"WhiteningInit: {trainer.ckpt_path} records no whitening init; the"
                    f" filters of {self.module!r} are left as restored"
                )
            else:
                rank_zero_info(
                    f"WhiteningInit: the filters of {self.module!r} were restored from"
                    f" {trainer.ckpt_path}, not recomputed"
                )
            return
        if getattr(pl_module, "init_weights", None):
            rank_zero_info(
                f"WhiteningInit: the model loads its weights from {pl_module.init_weights};"
                f" the filters of {self.module!r} are left as loaded"
            )
            return
        conv = self._conv(getattr(pl_module, "net", pl_module))
        weight = conv.weight
        filters = None
        if trainer.is_global_zero:
            filters = self.compute(trainer, conv).cpu()  # a CPU tensor: see broadcast below
        # broadcast_object_list pickles the object: a CUDA tensor would be unpickled on
        # rank 0's device index on every rank
        filters = trainer.strategy.broadcast(filters, src=0)
        with torch.no_grad():
            weight.copy_(filters.to(device=weight.device, dtype=weight.dtype))
        self.computed = True
        rank_zero_info(
            f"WhiteningInit: the filters of {self.module!r} whiten the {tuple(conv.kernel_size)}"
            f" patches of {self.images} training images (eps {self.eps:g})"
        )

    def compute(self, trainer: Trainer, conv: nn.Conv2d) -> torch.Tensor:
        """The filters from the DataModule's ``train_sample(images)``, on ``conv``'s device
        (run on rank 0 only)."""
        datamodule = trainer.datamodule
        if not callable(getattr(datamodule, "train_sample", None)):
            raise ConfigError(
                "WhiteningInit needs a DataModule with train_sample(count) (normalised"
                f" training images), such as groupwise.data.CIFAR10DataModule; got"
                f" {type(datamodule).__name__}"
            )
        images = datamodule.train_sample(self.images).to(conv.weight.device)
        return whitening_filters(images, conv.kernel_size, self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {
            "computed": self.computed,
            "module": self.module,
            "images": self.images,
            "eps": self.eps,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.computed = bool(state_dict.get("computed", False))

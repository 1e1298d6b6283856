"""The net of Keller Jordan's airbench94 (``airbench94_muon.py``, github
KellerJordan/cifar10-airbench, MIT licence), as a plain ``nn.Module``.

A 2x2 convolution whose filters whiten the image's 2x2 patches (set from training images
by ``init_whiten``, never trained), GELU, three groups of conv -> max-pool -> batch norm ->
GELU -> conv -> batch norm -> GELU, a 3x3 max-pool and a bias-free linear head whose
logits are divided by its input width. The modules carry airbench's names
(``whiten``, ``layers.1.conv1``, ``layers.1.norm1``, ..., ``head``), so the state dicts
of the two nets have the same keys, and a parameter-group rule picks:

- ``whiten.bias``: the whitening layer's bias (its weight is frozen);
- ``*.norm*.bias``: the batch-norm biases (their weights are frozen at 1);
- ``head.weight``: the head;
- ``layers.*.conv*.weight``: the conv filters (4-D).

What differs from the script: float32 throughout (airbench casts every module but the
batch norms to float16; here the caller picks the precision, e.g. Lightning's
``precision``); the parameters are drawn once in the constructor (airbench draws them
again in ``CifarNet.reset`` before each run: under the same seed, this constructor draws
the same values in the same order as that ``reset``); no ``whiten_bias_grad`` argument to
``forward`` (airbench detaches the whitening bias after its 3 epochs; a group schedule
that freezes the group does that here).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from groupwise.errors import ConfigError

WHITEN_KERNEL_SIZE = 2  # airbench94_muon.py: whiten_kernel_size = 2
WHITEN_EPS = 5e-4  # airbench94_muon.py: CifarNet.init_whiten(..., eps=5e-4)


class BatchNorm(nn.BatchNorm2d):
    """airbench's batch norm: running statistics with airbench's momentum 0.6 (the weight
    of the old value; torch's ``momentum`` is the weight of the new one, so 0.4), eps
    1e-12, and the weight frozen at 1 (``requires_grad=False``): only the bias trains."""

    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12) -> None:
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """3x3 'same' convolution without bias, initialised as airbench's ``Conv``: torch's
    default init, then the first ``in_channels`` filters set to the identity (dirac)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        weight = self.weight.data
        torch.nn.init.dirac_(weight[: weight.size(1)])


class ConvGroup(nn.Module):
    """conv -> 2x2 max-pool -> norm -> GELU -> conv -> norm -> GELU (airbench's ConvGroup)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out)
        self.activ = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class AirbenchNet(nn.Module):
    """airbench94's ``CifarNet`` (see the module docstring): ``whiten``, ``layers``, ``head``.

    The whitening filters are torch's default init until ``init_whiten`` sets them (the
    callback ``groupwise.callbacks.WhiteningInit`` does that before training); they are
    frozen (``requires_grad=False``), so no optimizer group holds them.

    Args:
        num_classes: number of output logits.
        widths: output channels of the three conv groups (airbench: 64, 256, 256).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (64, 256, 256)) -> None:
        super().__init__()
        widths = list(widths)
        if len(widths) != 3 or min(widths) < 1:
            raise ConfigError(f"widths must be three positive channel counts, got {widths}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be a positive number, got {num_classes}")
        whiten_width = 2 * 3 * WHITEN_KERNEL_SIZE**2  # each eigenvector and its negative
        self.whiten = nn.Conv2d(3, whiten_width, WHITEN_KERNEL_SIZE, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.layers = nn.Sequential(
            nn.GELU(),
            ConvGroup(whiten_width, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
            nn.MaxPool2d(3),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        with torch.no_grad():
            self.head.weight.mul_(1 / self.head.weight.std())  # airbench's reset(): std 1

    @torch.no_grad()
    def init_whiten(self, images: torch.Tensor, eps: float = WHITEN_EPS) -> None:
        """Set the whitening filters from normalised training images ``(N, 3, H, W)``
        (airbench: the first 5,000): see ``whitening_filters``."""
        weight = self.whiten.weight
        filters = whitening_filters(images, weight.shape[-2:], eps)
        weight.copy_(filters.to(weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.whiten(x))
        x = x.view(len(x), -1)
        return self.head(x) / x.size(-1)


def whitening_filters(
    images: torch.Tensor, kernel_size: Sequence[int], eps: float = WHITEN_EPS
) -> torch.Tensor:
    """airbench's ``init_whiten``: the filters ``(2 * C * kh * kw, C, kh, kw)`` of a conv
    that whitens the ``(kh, kw)`` patches of ``images`` ``(N, C, H, W)``: the eigenvectors
    of the patches' (uncentred) covariance, each divided by ``sqrt(eigenvalue + eps)``,
    followed by their negatives. Computed in float32 (float64 input stays float64).

    torch has the pieces (``unfold``, ``linalg.eigh``) but no such init; this is the
    script's code, with the patch size given rather than read from a conv.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    h, w = (int(k) for k in kernel_size)
    c = images.shape[1]
    x = images if images.dtype == torch.float64 else images.float()
    patches = x.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
    flat = patches.reshape(len(patches), -1)
    covariance = (flat.T @ flat) / len(flat)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance, UPLO="U")
    scaled = eigenvectors.T.reshape(-1, c, h, w) / torch.sqrt(eigenvalues.view(-1, 1, 1, 1) + eps)
    return torch.cat((scaled, -scaled))

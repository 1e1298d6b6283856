"""A small residual conv net with batch norm for fast CIFAR-10 training.

The layout follows the fastest published CIFAR-10 trainers (Page's ResNet-9, Jordan's
airbench): a 2x2 stem, then three stages of conv -> max-pool -> conv with a residual
connection around the second conv, global max-pool and a bias-free linear layer.
The widths are a parameter: the defaults are sized for a 2-core CPU; the published
GPU nets use about (64, 256, 256).
"""

from collections.abc import Sequence

import torch
from torch import nn

from groupwise.errors import ConfigError


class ConvNorm(nn.Sequential):
    """Convolution (no bias: the norm's shift replaces it), batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False
        )
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)


class Stage(nn.Module):
    """conv -> 2x2 max-pool -> x + conv(x): halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = ConvNorm(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(x))
        return x + self.conv2(x)


class FastNet(nn.Module):
    """``backbone`` (2x2 stem + three stages) and ``head`` (global max-pool + linear).

    Batch-norm modules are all named ``norm``, so a parameter-group rule can pick the
    norm parameters with ``params: ["*.norm.*"]``.

    Args:
        num_classes: number of output logits.
        widths: output channels of the three stages.
        stem_width: output channels of the 2x2 stem convolution.
    """

    def __init__(
        self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128), stem_width: int = 24
    ) -> None:
        super().__init__()
        if len(widths) != 3 or min(widths) < 1:
            raise ConfigError(f"widths must be three positive channel counts, got {widths}")
        if stem_width < 1:
            raise ConfigError(f"stem_width must be a positive channel count, got {stem_width}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be a positive number, got {num_classes}")
        stages, channels = [], stem_width
        for width in widths:
            stages.append(Stage(channels, width))
            channels = width
        self.backbone = nn.Sequential(ConvNorm(3, stem_width, kernel_size=2), *stages)
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

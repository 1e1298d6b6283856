"""LeNet-5 (LeCun et al., 1998) for 3x32x32 input, with ReLU and max-pooling."""

import torch
from torch import nn


class LeNet5(nn.Module):
    """LeNet-5 in two named parts, so parameter groups can pick them by module name.

    ``features``: conv 5x5 (6) -> pool -> conv 5x5 (16) -> pool, giving 16x5x5.
    ``classifier``: fully connected 400 -> 120 -> 84 -> ``num_classes``.

    Args:
        num_classes: number of output logits.
        in_channels: image channels (3 for CIFAR-10).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

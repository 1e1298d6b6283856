"""A CIFAR-shaped classifier with a tied weight, for tests that run it through the CLI
(``class_path: tied_net.TiedNet``; pytest puts ``tests/`` on ``sys.path``)."""

import torch
from torch import nn


class TiedNet(nn.Module):
    """Pool to 4x4, a linear layer to ``num_classes``, a mixing layer, and a head whose weight
    is the mixing layer's (one tensor, two names: ``mix.weight`` and ``head.weight``)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 4 * 4, num_classes)
        self.mix = nn.Linear(num_classes, num_classes)
        self.head = nn.Linear(num_classes, num_classes)
        self.head.weight = self.mix.weight

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(images, 4).flatten(1)
        return self.head(torch.relu(self.mix(self.proj(x))))

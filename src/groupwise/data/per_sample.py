"""A dataset that runs a torchvision-style transform on one image at a time.

The DataModule's default path hands out whole uint8 batches and augments them in one go on
the device (:mod:`groupwise.data.batch_augment`). A user's own transform (any torchvision v2
pipeline, or any callable) instead runs here, in ``__getitem__``: in the DataLoader's worker
processes when ``num_workers > 0``, with ``default_collate`` stacking the results.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import TensorDataset


class PerSampleDataset(TensorDataset):
    """``(transform(images[i]), labels[i])`` for the uint8 images ``(N, C, H, W)``.

    Unlike :class:`groupwise.data.cifar10.BatchTensorDataset` it has no ``__getitems__``, so the
    DataLoader fetches one sample at a time and collates them with ``default_collate``.

    Args:
        images: uint8 images, ``(N, C, H, W)``; the transform gets a copy of one
            ``(C, H, W)`` image, so an in-place transform cannot alter the stored split.
        labels: int64 labels, ``(N,)``.
        transform: Called on each image; returns what the model is fed (for this template's
            DataModule: a float tensor, normalised as wanted).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__(images, labels)
        self.transform = transform

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.tensors
        return self.transform(images[index].clone()), labels[index]

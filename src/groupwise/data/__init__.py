"""CIFAR-10 data: the DataModule, reading both layouts, batched and test-time augmentation."""

from groupwise.data.cifar10 import CIFAR10DataModule, EpochRandomSampler
from groupwise.data.cifar10_files import (
    CIFAR10DownloadError,
    CIFAR10FileError,
    CIFAR10NotFoundError,
)

__all__ = [
    "CIFAR10DataModule",
    "CIFAR10DownloadError",
    "CIFAR10FileError",
    "CIFAR10NotFoundError",
    "EpochRandomSampler",
]

"""Test-time augmentation levels: the logits of a net averaged over views of each image.

The levels are airbench94's (``infer`` in ``airbench94_muon.py``, tta_level 0/1/2):

- ``none``: the net's logits;
- ``mirror``: the mean of the logits of the image and of its left-right mirror image;
- ``mirror_translate``: ``0.5 * mirror(x) + 0.5 * mean(mirror(t1), mirror(t2))``, where
  ``t1`` and ``t2`` are the image moved by one pixel down-right and up-left over its
  reflection (``F.pad(x, (1,) * 4, "reflect")`` cropped at (0, 0) and (2, 2)): six views,
  weighted 1/4, 1/4 and 1/8 each for the four translated ones.

torchvision has the transforms, not the averaging over views; this is the script's code.
Each ``mirror`` is one forward pass over a batch of 2N (the images, then their mirror
images), so memory grows 2x, not 6x, with ``mirror_translate``. The batch's make-up changes
no image's logits where the net is in eval mode (batch norm on its running statistics), as
Lightning sets it in validation, test and predict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.nn import functional as F

from groupwise.errors import ConfigError

TTALevel = Literal["none", "mirror", "mirror_translate"]
TTA_LEVELS: tuple[str, ...] = ("none", "mirror", "mirror_translate")


def tta_level(tta: str | None, tta_flip: bool) -> str:
    """The level from the Classifier's options: ``tta``, or where it is None ``mirror`` for
    ``tta_flip: true`` (its older name) and ``none`` otherwise. Both set is an error unless
    they agree."""
    if tta is None:
        return "mirror" if tta_flip else "none"
    if tta not in TTA_LEVELS:
        raise ConfigError(f"model.tta must be one of {list(TTA_LEVELS)}, got {tta!r}")
    if tta_flip and tta != "mirror":
        raise ConfigError(
            f"model.tta_flip: true is model.tta: mirror, and model.tta is {tta!r}: set only"
            " model.tta"
        )
    return tta


def tta_logits(
    net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, level: str
) -> torch.Tensor:
    """``net``'s logits of ``images`` (N, C, H, W) averaged over the views of ``level``."""
    if level == "none":
        return net(images)
    logits = _mirror(net, images)
    if level == "mirror":
        return logits
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    translated = [padded[..., 0:h, 0:w], padded[..., 2 : h + 2, 2 : w + 2]]
    moved = torch.stack([_mirror(net, view) for view in translated]).mean(0)
    return 0.5 * logits + 0.5 * moved


def _mirror(net: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    both = net(torch.cat([images, images.flip(3)]))
    return both.unflatten(0, (2, len(images))).mean(0)

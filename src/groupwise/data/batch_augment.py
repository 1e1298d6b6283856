"""Augmentation and normalisation of whole uint8 image batches (N, C, H, W), on any device.

torchvision's ``RandomCrop`` and ``RandomHorizontalFlip`` draw one random choice per
call, so on a batch they crop or flip every image the same way; per-image randomness
needs one call per image (a Python loop). Here each image's crop and flip are keyed by
(seed, epoch, image index) and applied to the whole batch in one gather, which is what
makes batched augmentation on the model's device cheap.

Nothing here reads a tensor on the host or makes a tensor from Python data once the
batch is on the device (on a GPU each would be a host-device sync or a blocking copy in
every training step): the per-image choices come from the batch's own index tensor, the
(seed, epoch) part of their key is hashed in Python ints, and the mean and standard
deviation are built once per device and kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
PaddingMode = Literal["constant", "reflect"]
FlipMode = Literal["random", "alternate", "none"]
PADDING_MODES: tuple[str, ...] = ("constant", "reflect")
FLIP_MODES: tuple[str, ...] = ("random", "alternate", "none")


def _check_batch(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"expected a batch of shape (N, C, H, W), got {tuple(images.shape)}")


def crop_flip(
    images: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flip: torch.Tensor | None,
    padding: int,
    padding_mode: PaddingMode = "constant",
) -> torch.Tensor:
    """Pad each image by ``padding``, crop back to (H, W) at offset (dy[i], dx[i]), each
    in ``[0, 2 * padding]`` (output pixel (y, x) is padded pixel (y + dy, x + dx)), and flip
    left-right the images where ``flip[i]`` is set (``None``: none), in one gather: a
    flipped image reads its crop's columns right to left, so no flipped copy is made.

    ``padding_mode``: ``"constant"`` pads with zeros; ``"reflect"`` mirrors the image at its
    border without repeating the edge pixel (``F.pad(..., mode="reflect")``, as
    airbench94's ``batch_crop`` reads its pre-padded images), so a crop is a translation
    whose uncovered border shows the image's own reflection; it needs ``padding < H, W``
    and reads the reflected pixels straight from the image (no padded copy)."""
    _check_batch(images)
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    if flip is None and padding == 0:
        return images
    n, c, h, w = images.shape
    reflect = padding_mode == "reflect"
    if reflect and padding >= min(h, w):
        raise ValueError(
            f"reflect padding of {padding} pixels needs images larger than that, got {h}x{w}"
        )
    padded = (
        F.pad(images, (padding, padding, padding, padding)) if padding and not reflect else images
    )
    hp, wp = (h, w) if reflect else (h + 2 * padding, w + 2 * padding)
    rows = dy[:, None] + torch.arange(h, device=images.device)  # (N, H)
    x = torch.arange(w, device=images.device)
    if flip is not None:  # column x of a flipped crop is column w - 1 - x of the crop
        x = torch.where(flip[:, None], w - 1 - x, x)  # (N, W)
    cols = dx[:, None] + x  # (N, W)
    if reflect:  # padded coordinate -> the image's: -k -> k, size - 1 + k -> size - 1 - k
        rows, cols = _reflect(rows - padding, h), _reflect(cols - padding, w)
    flat_index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w)  # (N, 1, H*W)
    out = padded.reshape(n, c, hp * wp).gather(2, flat_index.expand(n, c, h * w))
    return out.view(n, c, h, w)


def _reflect(coordinate: torch.Tensor, size: int) -> torch.Tensor:
    """Coordinates in ``[-(size - 1), 2 * (size - 1)]`` mirrored into ``[0, size - 1]``."""
    coordinate = coordinate.abs()
    return torch.where(coordinate > size - 1, 2 * (size - 1) - coordinate, coordinate)


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A 32-bit integer hash (xorshift-multiply rounds) of int64 tensors or Python ints
    holding values in [0, 2**32), the same bits for both. The multipliers are below 2**31,
    so no product overflows int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x6C8E9CF5) & _MASK32
    return x ^ (x >> 16)


def keyed_bits(seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """32 pseudo-random bits per index, a pure function of (seed, epoch, index).

    Counter-based rather than drawn from a generator's stream: the bits of an image do not
    depend on which batch, rank or process it lands in, or on what was drawn before it.
    """
    base = _mix32(_mix32(seed & _MASK32) ^ (epoch & _MASK32))  # Python ints: no tensor made
    return _mix32((indices.to(torch.int64) & _MASK32) ^ base)


def keyed_crop_flip(
    images: torch.Tensor,
    indices: torch.Tensor,
    seed: int,
    epoch: int,
    padding: int = 4,
    padding_mode: PaddingMode = "constant",
    flip: FlipMode = "random",
) -> torch.Tensor:
    """Random crop (padding ``padding``, ``padding_mode`` as in ``crop_flip``) and horizontal
    flip, image i's choice keyed by ``(seed, epoch, indices[i])``: the same image in the same
    epoch is augmented the same way whether the run is resumed, split across DDP ranks, or
    batched differently.

    ``flip``: ``"random"`` draws each image's flip every epoch; ``"alternate"`` is
    airbench94's scheme: each image's flip is drawn once (its epoch-0 draw, so epoch 0 is
    the same as ``"random"``'s) and every odd epoch flips all images the other way, so an
    image is seen both ways in every two epochs; ``"none"`` flips nothing. Each is a
    function of (seed, epoch, index), so resumable as the crop is."""
    if flip not in FLIP_MODES:
        raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
    indices = indices.to(images.device)
    bits = keyed_bits(seed, epoch, indices)
    span = 2 * padding + 1
    dy = (bits & 0xFFFF) % span
    dx = ((bits >> 16) & 0x7FFF) % span
    flips = None
    if flip == "random":
        flips = (bits >> 31) == 1
    elif flip == "alternate":
        first = bits if epoch == 0 else keyed_bits(seed, 0, indices)
        flips = (first >> 31) == 1
        if epoch % 2 == 1:
            flips = ~flips
    return crop_flip(images, dy, dx, flips, padding, padding_mode)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 ``(x / 255 - mean) / std`` per channel.

    Same arithmetic as torchvision's ``ToDtype(float32, scale=True)`` then ``Normalize``,
    with ``mean`` and ``std`` as tensors kept per device: torchvision's ``normalize`` builds
    them from the Python lists on every call (on a GPU, a blocking host-to-device copy).
    """
    _check_batch(images)
    scaled = TF.to_dtype(images, torch.float32, scale=True)
    mean_t, std_t = _channel_stats(tuple(mean), tuple(std), images.device)
    return TF.normalize(scaled, mean=mean_t, std=std_t, inplace=True)  # our copy


@lru_cache(maxsize=16)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``std`` as float32 tensors on ``device``, made once per device."""
    if not all(std):
        raise ValueError(f"std must have no zero, got {list(std)}")
    return (
        torch.tensor(mean, dtype=torch.float32, device=device),
        torch.tensor(std, dtype=torch.float32, device=device),
    )

"""Batched crop, flip and normalisation: exact outputs for known inputs and known draws."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from groupwise.data.batch_augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    crop_flip,
    keyed_bits,
    keyed_crop_flip,
    normalize,
)


def numbered_images(n: int, c: int = 3, h: int = 32, w: int = 32) -> torch.Tensor:
    """uint8 images whose pixels are all non-zero (1..255), so zeros can only be padding."""
    return (torch.arange(n * c * h * w) % 255 + 1).to(torch.uint8).view(n, c, h, w)


def test_crop_of_a_tiny_image_by_hand():
    image = torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.uint8)  # 1 x 1 x 2 x 2
    # offset (dy, dx) in [0, 2]: output pixel (y, x) = padded pixel (y + dy, x + dx)
    expected = {
        (0, 0): [[0, 0], [0, 1]],
        (0, 1): [[0, 0], [1, 2]],
        (0, 2): [[0, 0], [2, 0]],
        (1, 0): [[0, 1], [0, 3]],
        (1, 1): [[1, 2], [3, 4]],
        (1, 2): [[2, 0], [4, 0]],
        (2, 0): [[0, 3], [0, 0]],
        (2, 1): [[3, 4], [0, 0]],
        (2, 2): [[4, 0], [0, 0]],
    }
    dy, dx = (torch.tensor(offsets) for offsets in zip(*expected, strict=True))
    out = crop_flip(image.repeat(9, 1, 1, 1), dy, dx, None, padding=1)
    for i, want in enumerate(expected.values()):
        assert out[i, 0].tolist() == want, (int(dy[i]), int(dx[i]))


def test_crop_is_a_per_image_shift_with_zero_padding():
    images = numbered_images(64)
    generator = torch.Generator().manual_seed(3)
    dy, dx = (torch.randint(9, (64,), generator=generator) for _ in range(2))
    out = crop_flip(images, dy, dx, None, padding=4)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    for i in range(64):
        want = torch.zeros(3, 32, 32, dtype=torch.uint8)
        sy, sx = int(dy[i]) - 4, int(dx[i]) - 4  # shift of the source window
        # out[y, x] = images[y + sy, x + sx] where that is inside the image, else 0
        ys, xs = slice(max(0, -sy), min(32, 32 - sy)), slice(max(0, -sx), min(32, 32 - sx))
        src_ys = slice(ys.start + sy, ys.stop + sy)
        src_xs = slice(xs.start + sx, xs.stop + sx)
        want[:, ys, xs] = images[i, :, src_ys, src_xs]
        assert torch.equal(out[i], want), i
        assert int((out[i] == 0).sum()) == 3 * (32 * 32 - (32 - abs(sy)) * (32 - abs(sx)))


def test_padding_zero_without_flips_is_identity():
    images = numbered_images(4)
    zeros = torch.zeros(4, dtype=torch.int64)
    assert crop_flip(images, zeros, zeros, None, padding=0) is images


def test_flip_flips_exactly_the_chosen_images():
    image = torch.tensor([[[[1, 2, 3], [4, 5, 6]]]], dtype=torch.uint8)
    batch = torch.cat([image, image + 10] * 2)
    flip = torch.tensor([True, False, False, True])
    zeros = torch.zeros(4, dtype=torch.int64)
    out = crop_flip(batch, zeros, zeros, flip, padding=0)
    for i in range(4):
        base = 0 if i % 2 == 0 else 10
        want = [[3, 2, 1], [6, 5, 4]] if flip[i] else [[1, 2, 3], [4, 5, 6]]
        assert out[i, 0].tolist() == [[v + base for v in row] for row in want]


def test_normalize_exact_values():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalize(images)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    want = (torch.tensor([0.0, 1.0, 0.2]) - mean) / std
    torch.testing.assert_close(out[0, :, 0, 0], want)
    torch.testing.assert_close(out[0, 0], torch.full((2, 2), -0.4914 / 0.2470))
    assert torch.equal(out[0], out[1])


def test_normalize_matches_torchvision_totensor_normalize_per_image():
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    reference = T.Compose([T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    want = torch.stack([reference(Image.fromarray(x)) for x in hwc])
    got = normalize(torch.from_numpy(hwc).permute(0, 3, 1, 2), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "fn", [normalize, lambda x: crop_flip(x, torch.zeros(1), torch.zeros(1), None, 4)]
)
def test_rejects_a_single_image(fn):
    with pytest.raises(ValueError, match="N, C, H, W"):
        fn(torch.zeros(3, 32, 32, dtype=torch.uint8))


def test_keyed_crop_flip_is_independent_of_batching_and_keyed_by_seed_and_epoch():
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    index = torch.arange(1000, 1064)
    whole = keyed_crop_flip(images, index, seed=3, epoch=1)
    # split in two "ranks" (even and odd positions) and in a different order: same images
    even = keyed_crop_flip(images[0::2], index[0::2], seed=3, epoch=1)
    odd = keyed_crop_flip(images[1::2].flip(0), index[1::2].flip(0), seed=3, epoch=1)
    assert torch.equal(whole[0::2], even) and torch.equal(whole[1::2], odd.flip(0))
    assert not torch.equal(whole, keyed_crop_flip(images, index, seed=3, epoch=2))
    assert not torch.equal(whole, keyed_crop_flip(images, index, seed=4, epoch=1))


def test_keyed_bits_exact_values():
    """The bits that key every image's crop and flip: a change here changes every run's
    augmentation (and a resumed run's against its checkpoint's)."""
    index = torch.tensor([0, 1, 2, 49_999])
    assert keyed_bits(0, 0, index).tolist() == [0, 2543100323, 791167814, 1084230278]
    assert keyed_bits(12345, 7, index).tolist() == [3113189570, 3006478098, 3305345053, 3056061530]
    assert keyed_bits(2**40 + 3, 2**33 + 1, torch.tensor([5])).tolist() == [1250734454]


def test_keyed_crop_flip_choices_are_uniform():
    bits = keyed_bits(seed=0, epoch=0, indices=torch.arange(90_000))
    dy, dx, flip = (bits & 0xFFFF) % 9, ((bits >> 16) & 0x7FFF) % 9, bits >> 31
    for offsets in (dy, dx):
        counts = offsets.bincount(minlength=9)
        assert len(counts) == 9 and (counts - 10_000).abs().max() < 400  # ~4 sigma
    assert abs(flip.float().mean().item() - 0.5) < 0.01
    assert bits.min() >= 0 and bits.max() < 2**32


@pytest.mark.parametrize("padding", [0, 2, 4])
def test_crop_flip_in_one_gather_equals_crop_then_flip(padding):
    generator = torch.Generator().manual_seed(padding)
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=generator)
    dy = torch.randint(2 * padding + 1, (64,), generator=generator)
    dx = torch.randint(2 * padding + 1, (64,), generator=generator)
    flip = torch.rand(64, generator=generator) < 0.5
    assert 0 < int(flip.sum()) < 64
    cropped = crop_flip(images, dy, dx, None, padding)
    expected = torch.where(flip[:, None, None, None], cropped.flip(3), cropped)
    assert torch.equal(crop_flip(images, dy, dx, flip, padding), expected)

"""airbench94's augmentation as DataModule options: translation over a reflect-padded image
(``padding_mode: reflect`` with ``crop_padding``) and flips that alternate between epochs
(``flip: alternate``). Both are keyed by (seed, epoch, image index) like the default crop and
flip: checked as properties of ``keyed_crop_flip`` and through the real Trainer, a resume
included."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from fake_cifar import write_image_folder
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from groupwise.data.batch_augment import crop_flip, keyed_crop_flip, normalize
from groupwise.data.cifar10 import CIFAR10DataModule
from groupwise.errors import ConfigError


def airbench_batch_crop(images: torch.Tensor, shifts: torch.Tensor, r: int) -> torch.Tensor:
    """airbench94_muon.py's ``batch_crop`` (its r <= 2 branch, for any r) of the images
    reflect-padded by ``r`` (its ``F.pad(images, (pad,)*4, "reflect")``), given the shifts
    ``(N, 2)`` in ``[-r, r]`` it draws with ``torch.randint``."""
    padded = F.pad(images, (r,) * 4, "reflect")
    size = images.shape[-1]
    out = torch.empty_like(images)
    for i, (sy, sx) in enumerate(shifts.tolist()):
        out[i] = padded[i, :, r + sy : r + sy + size, r + sx : r + sx + size]
    return out


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), r=st.integers(1, 5), flip=st.booleans())
def test_reflect_crop_is_airbenchs_translation_of_the_reflect_padded_image(seed, r, flip):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=generator)
    shifts = torch.randint(-r, r + 1, (16, 2), generator=generator)
    flips = torch.rand(16, generator=generator) < 0.5 if flip else None
    out = crop_flip(images, shifts[:, 0] + r, shifts[:, 1] + r, flips, r, "reflect")
    expected = airbench_batch_crop(images.float(), shifts, r).to(torch.uint8)
    if flips is not None:
        expected = torch.where(flips[:, None, None, None], expected.flip(3), expected)
    assert torch.equal(out, expected)
    # padding then normalising is normalising then padding (airbench pads normalised images)
    torch.testing.assert_close(
        normalize(out),
        crop_flip(normalize(images), shifts[:, 0] + r, shifts[:, 1] + r, flips, r, "reflect"),
    )


def test_reflect_padding_needs_images_larger_than_it():
    zeros = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="reflect padding of 4 pixels needs images larger"):
        crop_flip(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), zeros, zeros, None, 4, "reflect")


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**40),
    epoch=st.integers(0, 50),
    start=st.integers(0, 10**6),
)
def test_alternate_flips_each_image_its_first_way_in_even_epochs_and_the_other_in_odd(
    seed, epoch, start
):
    """Without a crop, ``alternate`` shows image i in epoch e as in epoch 0 (even e) or
    mirrored (odd e); epoch 0 is ``random``'s epoch 0, and about half the images are
    flipped there."""
    images = torch.arange(64 * 3 * 2 * 4, dtype=torch.int64).view(64, 3, 2, 4)  # asymmetric
    index = torch.arange(start, start + 64)
    first = keyed_crop_flip(images, index, seed, 0, padding=0, flip="alternate")
    assert torch.equal(first, keyed_crop_flip(images, index, seed, 0, padding=0))
    flipped = (first != images).flatten(1).any(1)
    assert 12 <= int(flipped.sum()) <= 52  # 64 fair coins: outside this once in ~10^6
    now = keyed_crop_flip(images, index, seed, epoch, padding=0, flip="alternate")
    assert torch.equal(now, first.flip(3) if epoch % 2 else first)
    # the crop still changes every epoch, and any batching gives the same images
    cropped = keyed_crop_flip(images, index, seed, epoch, 1, "reflect", "alternate")
    halves = [
        keyed_crop_flip(images[part], index[part], seed, epoch, 1, "reflect", "alternate")
        for part in (slice(0, 64, 2), slice(1, 64, 2))
    ]
    assert torch.equal(cropped[0::2], halves[0]) and torch.equal(cropped[1::2], halves[1])


def test_flip_none_flips_nothing():
    images = torch.arange(8 * 3 * 2 * 4, dtype=torch.int64).view(8, 3, 2, 4)
    out = keyed_crop_flip(images, torch.arange(8), 0, 3, padding=0, flip="none")
    assert out is images


# ---- the DataModule, through the Trainer -----------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """50 training images (5 per class), PNG."""
    return write_image_folder(tmp_path_factory.mktemp("cifar_airbench"), n_per_class=5)


class RecordingDataModule(CIFAR10DataModule):
    """Records each training image the hook hands the model, by (epoch, image index)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: dict[tuple[int, int], torch.Tensor] = {}

    def on_after_batch_transfer(self, batch, dataloader_idx):
        out = super().on_after_batch_transfer(batch, dataloader_idx)
        if self.trainer.training:
            epoch = self.trainer.current_epoch
            for i, image in zip(batch[2].tolist(), out[0], strict=True):
                self.seen[(epoch, i)] = image.clone()
        return out


class Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 10)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(folder, root, epochs: int, ckpt_path=None, **options) -> RecordingDataModule:
    dm = RecordingDataModule(
        data_dir=str(folder), download=False, val_size=0, batch_size=20, **options
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=root,
    )
    trainer.fit(Linear(), datamodule=dm, ckpt_path=ckpt_path)
    return dm


def test_the_trainer_shows_every_image_mirrored_in_odd_epochs_and_a_resume_does_too(
    folder, tmp_path
):
    L.seed_everything(3)
    dm = fit(folder, tmp_path / "a", 3, crop_padding=0, flip="alternate")
    originals = normalize(dm.train_set.tensors[0])
    assert len(dm.seen) == 3 * 50
    flipped = 0
    for i in range(50):
        first = dm.seen[(0, i)]
        flipped += not torch.equal(first, originals[i])
        assert torch.equal(first, originals[i]) or torch.equal(first, originals[i].flip(2))
        assert torch.equal(dm.seen[(1, i)], first.flip(2)), i
        assert torch.equal(dm.seen[(2, i)], first), i
    assert 0 < flipped < 50
    # stopped after epoch 0 and resumed: epochs 1 and 2 see the same images
    L.seed_everything(3)
    fit(folder, tmp_path / "b", 1, crop_padding=0, flip="alternate")
    (checkpoint,) = (tmp_path / "b").rglob("*.ckpt")
    L.seed_everything(3)
    resumed = fit(folder, tmp_path / "b", 3, checkpoint, crop_padding=0, flip="alternate")
    assert sorted(resumed.seen) == [(e, i) for e in (1, 2) for i in range(50)]
    assert all(torch.equal(resumed.seen[key], dm.seen[key]) for key in resumed.seen)


def test_the_trainer_translates_by_at_most_crop_padding_over_the_reflected_image(folder, tmp_path):
    L.seed_everything(0)
    dm = fit(folder, tmp_path, 1, crop_padding=2, padding_mode="reflect", flip="none")
    images = dm.train_set.tensors[0]
    padded = F.pad(normalize(images), (2,) * 4, "reflect")
    used = set()
    for i in range(50):
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(dm.seen[(0, i)], padded[i, :, dy : dy + 32, dx : dx + 32])
        ]
        assert found, i
        used.update(found)
    assert len(used) > 10  # shifts vary from image to image


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"padding_mode": "edge"},
            r"padding_mode must be one of \['constant', 'reflect'\], got 'edge'",
        ),
        (
            {"flip": "always"},
            r"flip must be one of \['random', 'alternate', 'none'\], got 'always'",
        ),
        ({"padding_mode": "reflect", "crop_padding": 32}, r"crop_padding must be below 32, got 32"),
    ],
)
def test_bad_options_are_one_clear_error(folder, options, message):
    with pytest.raises(ConfigError, match=message):
        CIFAR10DataModule(data_dir=str(folder), **options)


def test_defaults_are_unchanged(folder):
    dm = CIFAR10DataModule(data_dir=str(folder))
    assert (dm.crop_padding, dm.padding_mode, dm.flip, dm.augment) == (
        4,
        "constant",
        "random",
        True,
    )

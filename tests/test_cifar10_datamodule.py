"""CIFAR10DataModule on fabricated data: split, loaders, batched augmentation, Lightning hooks."""

import itertools
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from fake_cifar import CLASSES, write_image_folder, write_python_layout
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler

from groupwise.data import cifar10_files
from groupwise.data.batch_augment import CIFAR10_MEAN, CIFAR10_STD, keyed_crop_flip, normalize
from groupwise.data.cifar10 import BatchTensorDataset, CIFAR10DataModule
from groupwise.data.cifar10_files import CIFAR10NotFoundError, cache_path

# the value a zero (padding) pixel of the red channel takes after normalisation
RED_ZERO = normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))[0, 0, 0, 0].item()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """60 training images (6 per class), 20 test images, PNG."""
    root = tmp_path_factory.mktemp("cifar_folder")
    return write_image_folder(root, n_per_class=6, with_test=True, n_test_per_class=2)


def make_dm(data_dir, **kwargs) -> CIFAR10DataModule:
    args = {"download": False, "val_size": 10, "batch_size": 16} | kwargs
    return CIFAR10DataModule(data_dir=str(data_dir), **args)


def fitted(data_dir, **kwargs) -> CIFAR10DataModule:
    dm = make_dm(data_dir, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


# ---- the split ------------------------------------------------------------------------------


def test_split_sizes_disjoint_and_covering(folder):
    dm = fitted(folder, val_size=10)
    assert len(dm.train_set) == 50 and len(dm.val_set) == 10
    train, val = set(dm.train_indices.tolist()), set(dm.val_indices.tolist())
    assert not train & val
    assert train | val == set(range(60))
    # the tensors are the indexed rows of the full training split
    full = cifar10_files.load_split(folder, "train")
    assert torch.equal(dm.val_set.tensors[0], full.images[dm.val_indices])
    assert torch.equal(dm.train_set.tensors[1], full.labels[dm.train_indices])


def test_split_is_deterministic_per_seed(folder):
    a, b = fitted(folder, seed=0), fitted(folder, seed=0)
    c = fitted(folder, seed=1)
    assert torch.equal(a.val_indices, b.val_indices)
    assert torch.equal(a.train_set.tensors[0], b.train_set.tensors[0])
    assert not torch.equal(a.val_indices, c.val_indices)
    # the first images of a seeded permutation, in its order, so anyone can reproduce it
    want = torch.randperm(60, generator=torch.Generator().manual_seed(0))[:10]
    assert torch.equal(a.val_indices, want)


def test_val_size_zero_and_out_of_range(folder):
    dm = fitted(folder, val_size=0)
    assert len(dm.train_set) == 60 and len(dm.val_set) == 0
    assert len(dm.val_dataloader()) == 0
    with pytest.raises(ValueError, match=r"val_size must be in \[0, 60\)"):
        fitted(folder, val_size=60)


def test_validation_and_test_order_is_a_seeded_permutation_so_the_first_batches_mix_classes(
    tmp_path,
):
    """Files are grouped by class; ``--trainer.limit_val_batches`` takes the first batches, so
    they must be a uniform sample of the split, not its first classes."""
    root = write_image_folder(tmp_path, n_per_class=20, with_test=True, n_test_per_class=10)
    dm = fitted(root, val_size=100, batch_size=10)
    dm.setup("test")
    labels = cifar10_files.load_split(root, "train").labels  # 20 of class 0, then class 1, ...
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    assert torch.equal(dm.val_indices, perm[:100])  # the split's own seeded order
    first = torch.cat([y for _, y, _ in itertools.islice(dm.val_dataloader(), 2)])
    assert torch.equal(first, labels[perm[:20]])
    counts = first.bincount(minlength=10)
    assert counts.tolist() == [2, 1, 2, 5, 2, 2, 2, 3, 0, 1]  # 9 of the 10 classes
    # the test split (10 per class) in a seeded order too: its first batch holds 7 classes
    test_first = next(iter(dm.test_dataloader()))[1]
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(test_first, torch.arange(10).repeat_interleave(10)[order[:10]])
    assert (test_first.bincount(minlength=10) > 0).sum() == 7
    # predict keeps the files' order, so its outputs line up with the files
    dm.setup("predict")
    assert next(iter(dm.predict_dataloader()))[1].tolist() == [0] * 10


# ---- classes, layouts, stages ---------------------------------------------------------------


def test_classes_and_num_classes(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=3, classes=["c", "a", "b"])
    dm = make_dm(root, val_size=2)
    assert dm.classes == ["a", "b", "c"] and dm.num_classes == 3  # read before setup
    dm.setup("fit")
    assert dm.classes == ["a", "b", "c"] and dm.num_classes == 3
    assert make_dm(tmp_path / "not_yet_downloaded").num_classes == 10


def test_python_layout_fit_and_test(tmp_path):
    root = write_python_layout(tmp_path, n_train=30, n_test=12)
    dm = make_dm(root, val_size=5)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert dm.classes == list(CLASSES)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (25, 5, 12)
    assert dm.test_set.tensors[1].tolist() == [i % 10 for i in range(12)]


def test_test_and_predict_without_test_split_are_clear_errors(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=2)
    dm = make_dm(root, val_size=2)
    dm.setup(None)  # everything there is: no test split, no error
    assert len(dm.train_set) == 18 and dm.test_set is None
    for stage in ("test", "predict"):
        with pytest.raises(CIFAR10NotFoundError, match=f"`{stage}` needs a test split") as info:
            dm.setup(stage)
        assert str(root / "test") in str(info.value)
    with pytest.raises(RuntimeError, match=r"call setup\('test'\)"):
        dm.test_dataloader()


def test_missing_data_is_a_clear_error_at_prepare_data(tmp_path):
    dm = make_dm(tmp_path / "empty")
    with pytest.raises(CIFAR10NotFoundError) as info:
        dm.prepare_data()
    msg = str(info.value)
    assert str(tmp_path / "empty") in msg
    assert "python layout" in msg and "image-folder layout" in msg


def test_prepare_data_builds_the_cache_that_setup_reads(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, n_per_class=2, with_test=True, n_test_per_class=1)
    dm = make_dm(root, val_size=4)
    dm.prepare_data()
    assert cache_path(root, "train").is_file() and cache_path(root, "test").is_file()

    def no_decoding(paths):
        raise AssertionError("setup decoded images instead of reading the cache")

    monkeypatch.setattr(cifar10_files, "decode_images", no_decoding)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (16, 4, 10)


def test_hyperparameters_are_saved(folder):
    dm = make_dm(folder, batch_size=7, seed=3)
    assert dm.hparams.batch_size == 7 and dm.hparams.seed == 3
    assert dm.hparams.data_dir == str(folder)


# ---- loaders -------------------------------------------------------------------------------


def test_loaders_yield_whole_uint8_batches_without_per_sample_indexing(folder, monkeypatch):
    dm = fitted(folder, val_size=10, batch_size=16)

    def per_sample(self, index):
        raise AssertionError("the fetcher indexed one sample at a time")

    monkeypatch.setattr(BatchTensorDataset, "__getitem__", per_sample)
    batches = list(dm.train_dataloader())
    assert [len(y) for _, y, _ in batches] == [16, 16, 16, 2]  # drop_last=False
    for x, y, index in batches:
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 32, 32)
        assert y.dtype == torch.int64
        # each batch carries the split indices of its images
        assert torch.equal(x, dm.train_set.tensors[0][index])
    # shuffled: every training image exactly once, not in stored order
    order = torch.cat([index for _, _, index in batches])
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    # validation in stored order
    val = list(dm.val_dataloader())
    assert torch.equal(torch.cat([x for x, _, _ in val]), dm.val_set.tensors[0])


def test_shuffle_is_a_function_of_seed_and_epoch_as_lightnings_distributed_sampler(
    folder, monkeypatch
):
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    dm = fitted(folder, val_size=10, batch_size=16)

    def order(epoch: int) -> list[int]:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([index for _, _, index in loader]).tolist()

    single = DistributedSampler(dm.train_set, num_replicas=1, rank=0, shuffle=True, seed=7)
    single.set_epoch(3)
    assert order(3) == list(single)  # the permutation Lightning's DDP ranks split
    torch.manual_seed(123)  # the global RNG plays no part
    assert order(3) == list(single)
    assert order(4) != order(3)


def test_loader_with_a_worker_process(folder):
    dm = fitted(folder, val_size=10, num_workers=1)
    loader = dm.val_dataloader()
    assert loader.persistent_workers
    x, y, _ = next(iter(loader))
    assert x.dtype == torch.uint8 and torch.equal(y, dm.val_set.tensors[1][:10])
    assert not fitted(folder).val_dataloader().persistent_workers


def test_lightning_can_swap_in_a_distributed_sampler(folder):
    """What Lightning does to the train loader under DDP (its own helper, rank 1 of 2)."""
    dm = fitted(folder, val_size=10, batch_size=8)
    sampler = DistributedSampler(dm.train_set, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = _update_dataloader(dm.train_dataloader(), sampler)
    batches = list(loader)
    assert [len(y) for _, y, _ in batches] == [8, 8, 8, 1]  # 25 of the 50 images
    assert all(x.dtype == torch.uint8 for x, _, _ in batches)
    assert torch.cat([index for _, _, index in batches]).tolist() == list(sampler)


# ---- on_after_batch_transfer -----------------------------------------------------------------


def numbered_batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    images = (torch.arange(n * 3 * 32 * 32) % 250 + 1).to(torch.uint8).view(n, 3, 32, 32)
    return images, torch.arange(n) % 10


def test_outside_a_trainer_only_normalizes(folder):
    dm = make_dm(folder)
    images, labels = numbered_batch()
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert x.dtype == torch.float32 and torch.equal(y, labels)
    assert torch.equal(x, normalize(images, CIFAR10_MEAN, CIFAR10_STD))
    # a bare tensor (e.g. an example input on its way to the model summary)
    assert torch.equal(dm.on_after_batch_transfer(images, 0), x)
    floats = torch.randn(2, 3, 32, 32)
    assert dm.on_after_batch_transfer(floats, 0) is floats


@pytest.mark.parametrize(
    ("training", "augment", "augmented"),
    [(True, True, True), (False, True, False), (True, False, False)],
)
def test_augments_only_training_batches(folder, training, augment, augmented, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    dm = make_dm(folder, augment=augment)
    dm.trainer = SimpleNamespace(training=training, current_epoch=2)  # what the hook reads
    images, labels = numbered_batch()
    index = torch.arange(100, 100 + len(labels))
    x, y = dm.on_after_batch_transfer((images, labels, index), 0)
    want = keyed_crop_flip(images, index, seed=5, epoch=2) if augmented else images
    assert torch.equal(x, normalize(want))
    assert torch.equal(y, labels)
    assert torch.equal(x, normalize(images)) is not augmented


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` moved down ``dy`` and right ``dx`` pixels (either sign), zeros moved in."""
    p = max(abs(dy), abs(dx))
    padded = torch.nn.functional.pad(image, (p, p, p, p))
    h, w = image.shape[-2:]
    return padded[..., p - dy : p - dy + h, p - dx : p - dx + w]


def crop_flip_candidates(
    image: torch.Tensor, max_shift: int
) -> dict[tuple[int, int, bool], torch.Tensor]:
    """Every shift of at most ``max_shift`` pixels each way, flipped and not."""
    shifts = range(-max_shift, max_shift + 1)
    return {
        (dy, dx, flip): shifted(image, dy, dx).flip(-1) if flip else shifted(image, dy, dx)
        for dy in shifts
        for dx in shifts
        for flip in (False, True)
    }


@pytest.mark.parametrize("crop_padding", [0, 2])
def test_crop_padding_bounds_the_shift(folder, crop_padding):
    dm = make_dm(folder, crop_padding=crop_padding)
    dm.trainer = SimpleNamespace(training=True, current_epoch=0)
    images, labels = numbered_batch(64)
    x, _ = dm.on_after_batch_transfer((images, labels, torch.arange(64)), 0)
    seen = set()
    for i in range(64):
        # a numbered image differs from each of its other shifts and flips
        found = [
            key
            for key, candidate in crop_flip_candidates(images[i], max_shift=3).items()
            if torch.equal(x[i], normalize(candidate[None])[0])
        ]
        assert len(found) == 1, (i, found)
        seen.add(found[0])
    assert max(max(abs(dy), abs(dx)) for dy, dx, _ in seen) == crop_padding
    assert {flip for _, _, flip in seen} == {False, True}
    if crop_padding == 0:
        assert {(dy, dx) for dy, dx, _ in seen} == {(0, 0)}  # flips only


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_crop_padding_is_a_clear_error(folder, bad):
    with pytest.raises(ValueError, match=rf"crop_padding must be an int >= 0 .* got {bad}$"):
        make_dm(folder, crop_padding=bad)


class Recorder(L.LightningModule):
    """Records the batches its steps receive."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 10)
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": [], "test": []}

    def _step(self, stage: str, batch) -> torch.Tensor:
        x, y = batch
        self.seen[stage].append(x.clone())
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def training_step(self, batch, batch_idx):
        return self._step("train", batch)

    def validation_step(self, batch, batch_idx):
        self._step("val", batch)

    def test_step(self, batch, batch_idx):
        self._step("test", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_calls_the_hook_augmenting_training_batches_only(folder, tmp_path):
    dm = make_dm(folder, val_size=10, batch_size=25)
    model = Recorder()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    train = torch.cat(model.seen["train"])
    assert train.dtype == torch.float32 and train.shape == (50, 3, 32, 32)
    # fabricated pixels are never 0, so a 0 can only come from the crop's zero padding
    assert (train[:, 0] == RED_ZERO).any()
    val = torch.cat(model.seen["val"])
    assert torch.equal(val, normalize(dm.val_set.tensors[0]))
    test = torch.cat(model.seen["test"])  # in the seeded order of the test split
    order = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(test, normalize(dm.test_set.tensors[0][order]))

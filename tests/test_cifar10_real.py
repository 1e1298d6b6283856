"""The real CIFAR-10 training JPEGs from ../shared/data, when there. Slow: run with -m slow."""

import pytest
import torch

from groupwise.data import cifar10_files
from groupwise.data.cifar10 import CIFAR10DataModule
from groupwise.data.cifar10_files import CIFAR10_CLASSES, cache_path, load_split

pytestmark = pytest.mark.slow


def test_real_training_jpegs_load_5000_per_class(real_cifar10_dir):
    split = load_split(real_cifar10_dir, "train")
    assert split.classes == list(CIFAR10_CLASSES)
    assert split.images.shape == (50_000, 3, 32, 32) and split.images.dtype == torch.uint8
    assert split.labels.bincount().tolist() == [5000] * 10
    # files are read class by class, in sorted order
    assert torch.equal(split.labels, torch.arange(10).repeat_interleave(5000))
    # real photos, not blank: mean pixel close to CIFAR-10's (0.49, 0.48, 0.45) * 255
    mean = split.images.float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(mean, torch.tensor([0.4914, 0.4822, 0.4465]), atol=0.01, rtol=0)


def test_real_data_module_reuses_the_cache(real_cifar10_dir, monkeypatch):
    dm = CIFAR10DataModule(data_dir=str(real_cifar10_dir), download=False)
    dm.prepare_data()  # decodes only if the cache is missing or stale
    assert cache_path(real_cifar10_dir, "train").is_file()

    def no_decoding(paths):
        raise AssertionError("the cached start decoded images")

    monkeypatch.setattr(cifar10_files, "decode_images", no_decoding)
    again = CIFAR10DataModule(data_dir=str(real_cifar10_dir), download=False)
    again.prepare_data()
    again.setup("fit")
    assert (len(again.train_set), len(again.val_set)) == (45_000, 5_000)
    assert again.num_classes == 10
    x, y, _ = next(iter(again.train_dataloader()))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    with pytest.raises(FileNotFoundError, match="has no test split"):
        again.setup("test")

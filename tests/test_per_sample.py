"""The per-sample path: a user's torchvision transform run image by image, from YAML or Python."""

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from cli_run import LENET, quick
from fake_cifar import write_image_folder
from torchvision.transforms import v2

from groupwise.cli import run
from groupwise.data.batch_augment import CIFAR10_MEAN, CIFAR10_STD, normalize
from groupwise.data.cifar10 import BatchTensorDataset, CIFAR10DataModule
from groupwise.data.per_sample import PerSampleDataset

# a deterministic transform whose output differs from the batched path's in every pixel
FLIP_NORMALIZE = v2.Compose(
    [
        v2.RandomHorizontalFlip(p=1.0),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[0.1, 0.2, 0.3], std=[0.5, 0.25, 0.125]),
    ]
)
# the batched path's normalisation, written as a torchvision pipeline
TO_FLOAT_NORMALIZE = v2.Compose(
    [v2.ToDtype(torch.float32, scale=True), v2.Normalize(CIFAR10_MEAN, CIFAR10_STD)]
)

# the docstring's example, a list-of-transforms Compose as YAML
TRAIN_TRANSFORM_YAML = """\
data:
  train_transform:
    class_path: torchvision.transforms.v2.Compose
    init_args:
      transforms:
        - class_path: torchvision.transforms.v2.RandomCrop
          init_args: {size: 32, padding: 4}
        - class_path: torchvision.transforms.v2.RandomHorizontalFlip
        - class_path: torchvision.transforms.v2.ToDtype
          init_args: {dtype: torch.float32, scale: true}
        - class_path: torchvision.transforms.v2.Normalize
          init_args: {mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616]}
"""
# the same kind of value on the command line (flow-style YAML)
EVAL_TRANSFORM_ARG = (
    "{class_path: torchvision.transforms.v2.Compose, init_args: {transforms: ["
    "{class_path: torchvision.transforms.v2.ToDtype,"
    " init_args: {dtype: torch.float32, scale: true}},"
    "{class_path: torchvision.transforms.v2.Normalize,"
    " init_args: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}}]}}"
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """60 training images (6 per class), 20 test images, PNG."""
    root = tmp_path_factory.mktemp("cifar_per_sample")
    return write_image_folder(root, n_per_class=6, with_test=True, n_test_per_class=2)


def fitted(data_dir, stage: str = "fit", **kwargs) -> CIFAR10DataModule:
    args = {"download": False, "val_size": 10, "batch_size": 16} | kwargs
    dm = CIFAR10DataModule(data_dir=str(data_dir), **args)
    dm.prepare_data()
    dm.setup(stage)
    return dm


def epoch_order(n: int, seed: int, epoch: int = 0) -> list[int]:
    """The training order of ``EpochRandomSampler`` (and Lightning's DistributedSampler)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def stack_transformed(transform, images: torch.Tensor, order: list[int]) -> torch.Tensor:
    return torch.stack([transform(images[i]) for i in order])


# ---- the dataset ------------------------------------------------------------------------------


def test_dataset_returns_the_transform_of_a_copy_of_each_image():
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    stored = images.clone()
    labels = torch.arange(5)

    def in_place(image: torch.Tensor) -> torch.Tensor:
        return image.mul_(2).float()  # a careless transform that writes into its input

    dataset = PerSampleDataset(images, labels, in_place)
    x, y = dataset[3]
    assert len(dataset) == 5 and int(y) == 3
    assert torch.equal(x, (stored[3] * 2).float())
    assert torch.equal(images, stored)  # the split is untouched


# ---- the DataModule's loaders -------------------------------------------------------------------


def test_train_batches_are_the_transform_applied_image_by_image_in_sampler_order(
    folder, monkeypatch
):
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    dm = fitted(folder, train_transform=FLIP_NORMALIZE)
    assert isinstance(dm.train_set, PerSampleDataset)
    assert isinstance(dm.val_set, BatchTensorDataset)  # no eval_transform: batched
    images, labels = dm.train_set.tensors
    batches = list(dm.train_dataloader())
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]  # default collate, drop_last=False
    order = epoch_order(50, seed=3)
    assert order != list(range(50))
    x = torch.cat([x for x, _ in batches])
    assert x.dtype == torch.float32 and x.shape == (50, 3, 32, 32)
    assert torch.equal(x, stack_transformed(FLIP_NORMALIZE, images, order))
    assert torch.equal(torch.cat([y for _, y in batches]), labels[order])


def test_deterministic_transform_equals_the_batched_path_without_augmentation(folder, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "4")
    per_sample = fitted(folder, train_transform=TO_FLOAT_NORMALIZE)
    batched = fitted(folder, augment=False)
    for dm in (per_sample, batched):
        dm.trainer = SimpleNamespace(training=True, current_epoch=0)  # what the hook reads
    pairs = zip(per_sample.train_dataloader(), batched.train_dataloader(), strict=True)
    for a, b in pairs:
        x_a, y_a = per_sample.on_after_batch_transfer(a, 0)
        x_b, y_b = batched.on_after_batch_transfer(b, 0)
        assert torch.equal(x_a, x_b) and torch.equal(y_a, y_b)


def test_eval_transform_for_val_test_and_predict_in_their_order(folder):
    dm = fitted(folder, stage=None, eval_transform=FLIP_NORMALIZE)
    assert isinstance(dm.train_set, BatchTensorDataset)  # no train_transform: batched
    test_order = torch.randperm(20, generator=torch.Generator().manual_seed(0)).tolist()
    loaders = {  # validation as stored (the split's seeded order), test seeded, predict as is
        "val": (dm.val_dataloader(), dm.val_set, list(range(len(dm.val_set)))),
        "test": (dm.test_dataloader(), dm.test_set, test_order),
        "predict": (dm.predict_dataloader(), dm.test_set, list(range(20))),
    }
    for stage, (loader, dataset, order) in loaders.items():
        images, labels = dataset.tensors
        labels = labels[order]
        x = torch.cat([x for x, _ in loader])
        want = stack_transformed(FLIP_NORMALIZE, images, order)
        assert torch.equal(x, want), stage
        assert torch.equal(torch.cat([y for _, y in loader]), labels), stage


def test_per_sample_loader_with_a_worker_process(folder, monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")
    dm = fitted(folder, num_workers=1, train_transform=FLIP_NORMALIZE)
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    x = torch.cat([x for x, _ in loader])
    images = dm.train_set.tensors[0]
    assert torch.equal(x, stack_transformed(FLIP_NORMALIZE, images, epoch_order(50, seed=0)))


# ---- on_after_batch_transfer ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("train_transform", "eval_transform", "training", "passed_on"),
    [
        (FLIP_NORMALIZE, None, True, True),
        (FLIP_NORMALIZE, None, False, False),
        (None, FLIP_NORMALIZE, False, True),
        (None, FLIP_NORMALIZE, True, False),
    ],
)
def test_hook_passes_on_the_batches_of_a_stage_with_a_transform(
    folder, train_transform, eval_transform, training, passed_on
):
    dm = CIFAR10DataModule(
        data_dir=str(folder),
        augment=False,
        train_transform=train_transform,
        eval_transform=eval_transform,
    )
    dm.trainer = SimpleNamespace(training=training, current_epoch=0)
    images = torch.randint(1, 256, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(4)
    # default_collate makes a list; uint8 images too stay as they are when passed on
    x, y = dm.on_after_batch_transfer([images, labels], 0)
    assert torch.equal(y, labels)
    if passed_on:
        assert x is images
    else:
        assert torch.equal(x, normalize(images))
    # a bare tensor (an example input) is still normalised
    assert torch.equal(dm.on_after_batch_transfer(images, 0), normalize(images))


class Recorder(L.LightningModule):
    """Records the batches its steps receive (as they are, whatever their dtype)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 10)
        self.seen: dict[str, list[torch.Tensor]] = {"train": [], "val": []}

    def _step(self, stage: str, batch) -> torch.Tensor:
        x, y = batch
        self.seen[stage].append(x.clone())
        return torch.nn.functional.cross_entropy(self.layer(x.float().flatten(1)), y)

    def training_step(self, batch, batch_idx):
        return self._step("train", batch)

    def validation_step(self, batch, batch_idx):
        self._step("val", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_feeds_the_model_the_transform_output_and_checkpoints_load_safely(
    folder, tmp_path, monkeypatch
):
    """A uint8-returning transform shows that nothing is applied on top of it in training,
    while validation keeps the batched normalisation."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "2")
    flip = v2.RandomHorizontalFlip(p=1.0)
    dm = CIFAR10DataModule(
        data_dir=str(folder), download=False, val_size=10, batch_size=25, train_transform=flip
    )
    model = Recorder()
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    train = torch.cat(model.seen["train"])
    images = dm.train_set.tensors[0]
    assert train.dtype == torch.uint8
    assert torch.equal(train, stack_transformed(flip, images, epoch_order(50, seed=2)))
    assert torch.equal(torch.cat(model.seen["val"]), normalize(dm.val_set.tensors[0]))
    # a transform object is saved as its repr: the checkpoint loads with weights_only=True
    (path,) = (tmp_path / "checkpoints").iterdir()
    saved = torch.load(path, weights_only=True)["datamodule_hyper_parameters"]
    assert saved["train_transform"] == repr(flip) and saved["eval_transform"] is None
    assert dm.hparams.train_transform == repr(flip) and dm.hparams.batch_size == 25


# ---- from YAML and the command line -----------------------------------------------------------


def test_yaml_compose_of_a_list_and_a_command_line_transform_parse(data_dir, tmp_path):
    config = tmp_path / "transform.yaml"
    config.write_text(TRAIN_TRANSFORM_YAML)
    args = ["--config", str(config), "--data.eval_transform", EVAL_TRANSFORM_ARG]
    cli = run(["--config", LENET, *quick(data_dir, tmp_path), *args], run=False)
    train = cli.datamodule.train_transform
    assert isinstance(train, v2.Compose)
    crop, flip, to_dtype, norm = train.transforms
    assert isinstance(crop, v2.RandomCrop) and crop.size == (32, 32) and crop.padding == [4] * 4
    assert isinstance(flip, v2.RandomHorizontalFlip) and flip.p == 0.5
    assert (to_dtype.dtype, to_dtype.scale) == (torch.float32, True)
    assert (norm.mean, norm.std) == ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
    # the command-line value gives the same result as its transform built in Python
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    want = (image.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(cli.datamodule.eval_transform(image), want)


def test_fit_through_the_cli_with_per_sample_transforms(data_dir, tmp_path):
    config = tmp_path / "transform.yaml"
    config.write_text(TRAIN_TRANSFORM_YAML)
    args = ["--config", str(config), "--data.eval_transform", EVAL_TRANSFORM_ARG]
    args += ["--trainer.max_epochs", "1"]
    cli = run(["fit", "--config", LENET, *quick(data_dir, tmp_path), *args])
    assert isinstance(cli.datamodule.train_set, PerSampleDataset)
    assert isinstance(cli.datamodule.val_set, PerSampleDataset)
    last = Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 3  # 60 training images in batches of 20
    # under the CLI the saved hparams are the config: the transforms as plain data
    saved = checkpoint["datamodule_hyper_parameters"]
    assert saved["train_transform"]["class_path"] == "torchvision.transforms.v2.Compose"
    steps = saved["train_transform"]["init_args"]["transforms"]
    assert [s["class_path"].rsplit(".", 1)[1] for s in steps] == [
        "RandomCrop",
        "RandomHorizontalFlip",
        "ToDtype",
        "Normalize",
    ]
    assert 0.0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1.0

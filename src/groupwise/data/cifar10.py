"""CIFAR-10 as a LightningDataModule: whole splits in memory as uint8, batched augmentation.

Files on disk are decoded once (and cached) by :mod:`groupwise.data.cifar10_files`. By default
loaders hand out ``(uint8 images N x 3 x 32 x 32, int64 labels, int64 indices)`` batches,
one tensor index per batch; random crop, flip (keyed by the indices) and normalisation run
on the whole batch on the model's device in ``on_after_batch_transfer``, which hands the
model ``(float images, labels)``. With a user's ``train_transform`` / ``eval_transform``
those splits go image by image through :class:`groupwise.data.per_sample.PerSampleDataset`
instead, and the hook passes their batches on as they are.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler, Subset, TensorDataset

from groupwise.data.batch_augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FLIP_MODES,
    PADDING_MODES,
    FlipMode,
    PaddingMode,
    keyed_crop_flip,
    normalize,
)
from groupwise.data.cifar10_files import (
    CIFAR10NotFoundError,
    Split,
    count_images,
    decode_images,
    detect_layout,
    ensure_data,
    has_split,
    load_split,
    read_classes,
)
from groupwise.data.per_sample import PerSampleDataset
from groupwise.data.predict_input import SPLITS, list_images, valid_inputs
from groupwise.data.resumable_loader import ResumableDataLoader
from groupwise.errors import ConfigError

# the init args that may hold a transform object (see ``CIFAR10DataModule.__init__``)
_TRANSFORM_ARGS = ("train_transform", "eval_transform")


class BatchTensorDataset(TensorDataset):
    """A ``TensorDataset`` whose batches are fetched with one index operation.

    ``TensorDataset`` lacks ``__getitems__``, so the DataLoader's fetcher would index it
    once per sample and ``default_collate`` would stack 128 small tensors per batch.
    With ``__getitems__`` the fetcher passes the whole batch's index list at once
    (torch/utils/data/_utils/fetch.py) and :func:`pass_through_collate` returns it as is.
    """

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        """The batch's tensors, then the indices themselves (which key its augmentation).

        ``index_select`` rather than ``t[index]``: advanced indexing gathers a uint8 image
        batch element by element (128 CIFAR-10 images: ~110 us on a 2-core CPU, ~230 us
        in a training step), ``index_select`` copies each image's row whole (~8 us)."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return (*(t.index_select(0, index) for t in self.tensors), index)


class EpochRandomSampler(RandomSampler):
    """Shuffles with a permutation that is a function of (seed, epoch) alone.

    ``RandomSampler`` draws its permutation from the global RNG, so a run resumed from a
    checkpoint shuffles differently from one that never stopped. This draws exactly the
    permutation of Lightning's ``DistributedSampler`` (``randperm(n)`` from a generator
    seeded with ``seed + epoch``) and Lightning calls ``set_epoch`` on it every epoch. Being
    a ``RandomSampler``, Lightning still replaces it by its ``DistributedSampler`` under DDP,
    whose ranks then split the same permutation a single process would walk through.
    """

    def __init__(self, data_source: Any, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator = torch.Generator().manual_seed(self.seed + epoch)


def global_seed() -> int:
    """The seed of ``seed_everything`` (``PL_GLOBAL_SEED``), as Lightning's samplers read it."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def seeded_permutation(n: int, seed: int) -> torch.Tensor:
    """``randperm(n)`` from a generator seeded with ``seed``: the same on every machine."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def pass_through_collate(batch: Any) -> Any:
    """Collate for :class:`BatchTensorDataset`: the batch is already stacked."""
    return batch


class CIFAR10DataModule(L.LightningDataModule):
    """CIFAR-10 from the official python batches or an image folder, held in memory.

    Args:
        data_dir: Directory holding ``cifar-10-batches-py/`` (official python layout) or
            ``train/<class>/*.png|jpg|jpeg`` with optional ``test/<class>/*`` (image-folder
            layout; classes in sorted order). The decode cache goes to
            ``<data_dir>/.groupwise_cache/``.
        download: Download the official archive into ``data_dir`` when neither layout is
            there (needs network).
        val_size: Number of training images held out for validation (0 for none).
        batch_size: Images per batch, for every loader.
        num_workers: DataLoader worker processes; 0 (load in the main process) is fastest
            here, since a batch is one tensor index.
        seed: Seed of the train/validation split and of the fixed order of the validation
            and test images (a seeded permutation, so any prefix is a uniform sample); not
            of shuffling or augmentation.
        augment: Random crop (zero padding ``crop_padding``) and horizontal flip of training
            batches, on the batched path (ignored when ``train_transform`` is given).
        cache: Cache the decoded images in ``<data_dir>/.groupwise_cache/``.
        crop_padding: Padding (pixels) of the batched random crop, so shifts of up to
            that many pixels each way; 0 means flip only, no crop.
        padding_mode: What the crop's padding shows: ``constant`` zeros (black, before
            normalisation), or ``reflect`` the image mirrored at its border (airbench94's
            translation: its ``batch_crop`` of reflect-padded images draws shifts in
            ``[-crop_padding, crop_padding]`` per axis and image, as this crop does).
        flip: The batched horizontal flip: ``random`` (each image, each epoch, with
            probability 1/2), ``alternate`` (airbench94's: each image's flip drawn once,
            then every odd epoch all images flipped the other way) or ``none``. Both kinds
            are keyed by (seed, epoch, image index), so a resumed run flips as an unbroken
            one (``groupwise.data.batch_augment.keyed_crop_flip``).
        train_transform: When given, training batches are built image by image (in the
            DataLoader's workers when ``num_workers > 0``) with this transform in place of
            the batched crop, flip and normalisation. It gets one uint8 tensor ``(C, H, W)``
            and must return a float tensor normalised as the model should see it: nothing
            is applied on top. Shuffling stays the same (``EpochRandomSampler``).
        eval_transform: The same for validation, test and predict; when None those keep
            the batched normalisation.
        predict_path: The images ``predict`` reads: ``test`` (the test split, in the
            files' order), ``train`` (the training split) or ``val`` (the held-out training
            images, in the files' order), or a path: a folder of ``.png``/``.jpg``/``.jpeg``
            images read recursively in sorted order, or one image (see
            :mod:`groupwise.data.predict_input`). Images must be 32x32; they get the
            evaluation transforms (normalisation, or ``eval_transform``). Not a setting of the
            run: it is left out of the saved hyper-parameters, so ``--ckpt_path last`` finds
            the run that trained the model.

    A transform is configured from YAML by its class path, a torchvision v2 pipeline as a
    ``Compose`` of a list of transforms; a ``torch.dtype`` is written as its import path::

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

    A per-sample transform draws its randomness from torch's global RNG (the main
    process's, or each worker's, which PyTorch seeds from it), not from the keyed
    (seed, epoch, index) choice of the batched path: runs are repeatable from the start
    under ``seed_everything``, but a resumed run draws other crops than an unbroken one.
    """

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        val_size: int = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = True,
        cache: bool = True,
        crop_padding: int = 4,
        padding_mode: PaddingMode = "constant",
        flip: FlipMode = "random",
        train_transform: Callable | None = None,
        eval_transform: Callable | None = None,
        predict_path: str = "test",
    ) -> None:
        super().__init__()
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
            raise ConfigError(
                f"crop_padding must be an int >= 0 (pixels of zero padding of the random"
                f" crop; 0 for flip only), got {crop_padding!r}"
            )
        if padding_mode not in PADDING_MODES:
            raise ConfigError(
                f"padding_mode must be one of {list(PADDING_MODES)}, got {padding_mode!r}"
            )
        if padding_mode == "reflect" and crop_padding >= 32:
            raise ConfigError(
                f"padding_mode 'reflect' mirrors the 32x32 image at its border, so crop_padding"
                f" must be below 32, got {crop_padding}"
            )
        if flip not in FLIP_MODES:
            raise ConfigError(f"flip must be one of {list(FLIP_MODES)}, got {flip!r}")
        self._save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.download = download
        self.val_size = val_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.augment = augment
        self.cache = cache
        self.crop_padding = crop_padding
        self.padding_mode = padding_mode
        self.flip = flip
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.predict_path = predict_path
        # a BatchTensorDataset, or a PerSampleDataset where the split has a transform
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None
        self.predict_set: TensorDataset | None = None
        # what each row of the predictions says about its image, by predict_set index:
        # {"image": paths} for files, {"index": ..., "label": ...} for a split
        self.predict_columns: dict[str, list[str]] = {}
        self._predict_images: tuple[list[Path], torch.Tensor] | None = None  # files, decoded
        self.train_indices: torch.Tensor | None = None  # into the training split
        self.val_indices: torch.Tensor | None = None
        self._classes: list[str] | None = None

    def _save_hyperparameters(self) -> None:
        """``save_hyperparameters()``, with a transform given as an object kept as its repr.

        Under LightningCLI the saved hparams are the config, where a transform is plain data
        (its ``class_path`` and ``init_args``). A transform object built in Python would be
        pickled into checkpoints, which are loaded with ``weights_only=True`` and so refused.
        """
        with warnings.catch_warnings():
            # v2 transforms are nn.Modules, for which Lightning advises `ignore=`; the repr
            # below is what keeps them out of the checkpoint
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            # predict_path: what to predict, not a setting of the run (see __init__)
            self.save_hyperparameters(ignore=["predict_path"])
        hparams = dict(self.hparams)
        for name in _TRANSFORM_ARGS:
            if callable(hparams.get(name)):
                hparams[name] = repr(hparams[name])
        self.save_hyperparameters(hparams)

    # ---- what the data is --------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """Class names in label order. Before ``setup`` they are read from the files'
        layout without decoding (the official names when nothing is downloaded yet)."""
        if self._classes is None:
            return read_classes(self.data_dir)
        return self._classes

    @property
    def num_classes(self) -> int:
        """Number of classes (10 for CIFAR-10)."""
        return len(self.classes)

    # ---- what a checkpoint keeps ---------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: the seed the training order and augmentation are
        keyed by (``seed_everything``), which tells runs of one config apart (read by
        ``--ckpt_path last``)."""
        return {"seed": global_seed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the seed is the new run's ``seed_everything``."""

    def num_train_images(self) -> int:
        """Images in an epoch of training (the training split less ``val_size``), counted
        from the files without decoding (``cifar10_files.count_images``)."""
        return count_images(self.data_dir, "train") - self.val_size

    def train_sample(self, count: int) -> torch.Tensor:
        """``count`` training images as float32, normalised as training batches are but not
        augmented: the first ``count`` training images in the order of the split's seeded
        permutation (``seed``; the images after the ``val_size`` held out), the same in
        every process and every run with that seed. A uniform sample, not the first files:
        the image-folder layout lists them class by class. For data-dependent inits
        (``groupwise.callbacks.WhiteningInit``); needs ``setup("fit")`` and the batched
        path (no ``train_transform``)."""
        if self.train_set is None:
            raise RuntimeError("call setup('fit') before asking for training images")
        if self.train_transform is not None:
            raise ConfigError(
                "a sample of normalised training images needs the batched path; with"
                " data.train_transform the training images go through that transform instead"
            )
        images = self.train_set.tensors[0]
        if not 0 < count <= len(images):
            raise ConfigError(
                f"asked for {count} training images; the training split has {len(images)}"
                f" (data.val_size {self.val_size} held out)"
            )
        perm = seeded_permutation(len(images) + self.val_size, self.seed)  # as the split
        picked = perm[self.val_size : self.val_size + count]  # indices into the split
        order = torch.searchsorted(self.train_indices, picked)  # train_set holds them sorted
        return normalize(images.index_select(0, order), CIFAR10_MEAN, CIFAR10_STD)

    # ---- Lightning's data hooks --------------------------------------------------------

    def prepare_data(self) -> None:
        """Download if needed, then decode each split once into the cache. For ``predict``,
        only what it reads: the images are checked here, before a run directory is made."""
        if self._stage() == "predict":
            self._prepare_predict()
            return
        ensure_data(self.data_dir, self.download)
        if self.cache:
            for split in ("train", "test"):
                if has_split(self.data_dir, split):
                    load_split(self.data_dir, split, cache=True)

    def _stage(self) -> str | None:
        """The trainer's current function (``fit``, ``predict``, ...), None without one."""
        fn = self.trainer.state.fn if self.trainer is not None else None
        return None if fn is None else str(getattr(fn, "value", fn))

    def _prepare_predict(self) -> None:
        """Check (and decode) the images ``predict`` reads; a split is cached as for fit."""
        self.check_predict_input()
        if self.predict_path in SPLITS:
            ensure_data(self.data_dir, self.download)
            self._load_predict_split(self._predict_split_name(), cache=self.cache)

    def check_predict_input(self) -> None:
        """Raise a ``UserError`` for images ``predict`` cannot read (decoding the files of
        a path, kept for ``setup``; a split is only looked for), downloading nothing. Called
        by ``prepare_data``, and by the ``groupwise`` CLI in every process before
        ``predict``: Lightning calls ``prepare_data`` in one process per node, after DDP
        started the others, which would then fail with a traceback of their own."""
        if self.predict_path not in SPLITS:
            if self._predict_images is None:
                paths = list_images(self.predict_path)
                self._predict_images = (paths, decode_images(paths))
            return
        split = self._predict_split_name()
        if detect_layout(self.data_dir) is not None and not has_split(self.data_dir, split):
            self._load_predict_split(split, cache=False)  # raises: no such split

    def _predict_split_name(self) -> str:
        """The split the ``predict_path`` split name reads (``train`` for ``val``)."""
        if self.predict_path == "val" and self.val_size == 0:
            raise ConfigError(
                "data.predict_path 'val' reads the images held out for validation, and"
                " data.val_size is 0: set val_size > 0, or predict 'train' or 'test'."
            )
        return "test" if self.predict_path == "test" else "train"

    def _load_predict_split(self, split: str, cache: bool) -> Split:
        """``split`` for ``predict``; a missing test split names ``predict_path``."""
        try:
            return load_split(self.data_dir, split, cache=cache)
        except CIFAR10NotFoundError as e:
            if split != "test":
                raise
            raise CIFAR10NotFoundError(
                f"`predict` needs a test split, or the images to predict in"
                f" --data.predict_path (default: test). {e} Set --data.predict_path:"
                f" {valid_inputs()}."
            ) from e

    def setup(self, stage: str | None = None) -> None:
        """Load the tensors (from the cache) for ``stage`` and split off validation."""
        stage = None if stage is None else str(getattr(stage, "value", stage))  # a TrainerFn
        if stage == "predict":
            self._setup_predict()
            return
        if stage in (None, "fit", "validate") and self.train_set is None:
            self._setup_train(load_split(self.data_dir, "train", cache=self.cache))
        if stage in (None, "test") and self.test_set is None:
            if stage is None and not has_split(self.data_dir, "test"):
                return
            try:
                test = load_split(self.data_dir, "test", cache=self.cache)
            except CIFAR10NotFoundError as e:
                raise CIFAR10NotFoundError(
                    f"`{stage}` needs a test split. {e} Validate on the held-out"
                    " training images instead (`validate`), or add the test split."
                ) from e
            self._classes = self._classes or test.classes
            self.test_set = _dataset(test.images, test.labels, self.eval_transform)
        if stage is None and self.predict_path == "test" and self.test_set is not None:
            self._setup_predict()  # everything there is: the test split's predictions too

    def _setup_predict(self) -> None:
        """The images of ``predict_path`` as ``predict_set``, with ``predict_columns``."""
        if self.predict_set is not None:
            return
        if self.predict_path not in SPLITS:
            self.check_predict_input()  # decodes, where prepare_data ran in another process
            paths, images = self._predict_images
            labels = torch.full((len(paths),), -1, dtype=torch.int64)  # none known
            self.predict_columns = {"image": [str(path) for path in paths]}
        else:
            images, labels, index = self._predict_split()
            self.predict_columns = {
                "index": [str(i) for i in index.tolist()],
                "label": [self.classes[y] for y in labels.tolist()],
            }
        self.predict_set = _dataset(images, labels, self.eval_transform)
        self._predict_images = None

    def _predict_split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images, labels and indices in their split (the training split for ``val``) of
        the split ``predict_path`` names, in the files' order."""
        if self.predict_path == "test" and self.test_set is not None:  # setup(None) read it
            images, labels = self.test_set.tensors[:2]
            return images, labels, torch.arange(len(labels))
        loaded = self._load_predict_split(self._predict_split_name(), cache=self.cache)
        self._classes = loaded.classes
        index = torch.arange(len(loaded.labels))
        if self.predict_path == "val":
            self._setup_train(loaded)
            index = self.val_indices.sort().values  # the files' order
        return loaded.images[index], loaded.labels[index], index

    def _setup_train(self, split: Split) -> None:
        n = len(split.labels)
        if not 0 <= self.val_size < n:
            raise ConfigError(
                f"val_size must be in [0, {n}) for {n} training images, got {self.val_size}"
            )
        perm = seeded_permutation(n, self.seed)
        # validation keeps the permutation's order: image-folder files come grouped by class,
        # and --trainer.limit_val_batches takes the first batches, which must be a uniform
        # sample; training is sorted (gathers in memory order; its loader shuffles anyway)
        self.val_indices = perm[: self.val_size]
        self.train_indices = perm[self.val_size :].sort().values
        self._classes = split.classes
        self.train_set = _dataset(
            split.images[self.train_indices],
            split.labels[self.train_indices],
            self.train_transform,
        )
        self.val_set = _dataset(
            split.images[self.val_indices], split.labels[self.val_indices], self.eval_transform
        )

    def _loader(self, dataset: TensorDataset | None, stage: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"call setup({stage!r}) before asking for its dataloader")
        # a plain DataLoader with a RandomSampler (sub)class, so Lightning can swap in a
        # DistributedSampler under DDP; drop_last=False keeps every image
        base = dataset.dataset if isinstance(dataset, Subset) else dataset
        batched = isinstance(base, BatchTensorDataset)
        # the training loader is resumable: a mid-epoch resume goes on with the next batch
        loader = ResumableDataLoader if shuffle else DataLoader
        return loader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochRandomSampler(dataset, global_seed()) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=pass_through_collate if batched else None,  # None: default_collate
            persistent_workers=self.num_workers > 0,
            drop_last=False,
            # each iterator's seed (for its workers) is drawn from this generator: without
            # one, every iterator created draws from torch's global generator, so how many
            # were created (a resume creates fewer) would shift the dropout masks after it
            generator=torch.Generator().manual_seed(global_seed()),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "fit", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "validate", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """The test split in a fixed seeded order (``seed``), so that any prefix of it
        (``--trainer.limit_test_batches``) is a uniform sample, not the first classes."""
        if self.test_set is None:
            return self._loader(None, "test", shuffle=False)
        order = seeded_permutation(len(self.test_set), self.seed).tolist()
        return self._loader(Subset(self.test_set, order), "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The images of ``predict_path`` in the files' order, so predictions line up with
        the files (``predict_columns`` says which image each index is)."""
        return self._loader(self.predict_set, "predict", shuffle=False)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment (training only) and normalise the uint8 images, already on the device;
        returns ``(images, labels)``.

        Lightning calls the DataModule's override of this hook in place of the
        LightningModule's. A bare tensor (e.g. a model's ``example_input_array`` on its
        way to the model summary) is treated as the images; float images pass unchanged.
        Each image's crop and flip are keyed by (seed, epoch, its index in the split), so
        they are the same after a resume and under any number of DDP ranks. Batches of a
        stage with a user's transform (``train_transform`` while training,
        ``eval_transform`` otherwise) are passed on as they are, whatever their dtype.
        """
        if isinstance(batch, torch.Tensor):
            return self._transform(batch, None)
        images, labels, *index = batch
        if self._per_sample_stage():
            return images, labels
        return self._transform(images, index[0] if index else None), labels

    def _per_sample_stage(self) -> bool:
        """Whether the trainer's current loader comes from a ``PerSampleDataset``."""
        if self.trainer is None:
            return False
        transform = self.train_transform if self.trainer.training else self.eval_transform
        return transform is not None

    def _transform(self, images: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if images.dtype != torch.uint8:
            return images
        if self.augment and self.trainer is not None and self.trainer.training:
            if index is None:
                raise ValueError("training batches need their dataset indices to augment")
            epoch = self.trainer.current_epoch
            images = keyed_crop_flip(
                images,
                index,
                global_seed(),
                epoch,
                self.crop_padding,
                self.padding_mode,
                self.flip,
            )
        return normalize(images, CIFAR10_MEAN, CIFAR10_STD)


def _dataset(
    images: torch.Tensor, labels: torch.Tensor, transform: Callable | None
) -> TensorDataset:
    """The batched dataset of a split, or the per-sample one when it has a transform."""
    if transform is None:
        return BatchTensorDataset(images, labels)
    return PerSampleDataset(images, labels, transform)

"""Tiny fabricated CIFAR-10 data sets on disk, in both layouts the DataModule reads.

Import from tests as ``from fake_cifar import ...`` (pytest puts ``tests/`` on sys.path,
since ``tests/`` has no ``__init__.py``).

Images are learnable: every class has its own base colour plus a little noise, so a
tiny net fits them in a few steps.
"""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

PYTHON_DIR = "cifar-10-batches-py"
_NOISE = 24  # +- noise amplitude around the class colour, in uint8 steps


def class_colour(label: int) -> np.ndarray:
    """The base RGB colour of class ``label`` (distinct for labels 0..9), shape (3,)."""
    # spread hues: each channel takes one of a few levels, chosen by the label's digits
    levels = np.array([40, 128, 215])
    return np.array([levels[label % 3], levels[(label // 3) % 3], levels[(label // 9 + label) % 3]])


def fake_images(labels: Sequence[int], seed: int = 0) -> np.ndarray:
    """uint8 images (N, 32, 32, 3): the class colour of each label plus uniform noise."""
    rng = np.random.default_rng(seed)
    base = np.stack([class_colour(int(y)) for y in labels]) if len(labels) else np.zeros((0, 3))
    noise = rng.integers(-_NOISE, _NOISE + 1, size=(len(labels), 32, 32, 3))
    return np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def _write_split(
    split_dir: Path, n_per_class: int, classes: Sequence[str], ext: str, seed: int
) -> None:
    labels = [c for c in range(len(classes)) for _ in range(n_per_class)]
    images = fake_images(labels, seed=seed)
    for i, (label, image) in enumerate(zip(labels, images, strict=True)):
        class_dir = split_dir / classes[label]
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(class_dir / f"{i % n_per_class:04d}.{ext}")


def write_image_folder(
    root: Path,
    n_per_class: int = 4,
    classes: Sequence[str] = CLASSES,
    ext: str = "png",
    with_test: bool = False,
    n_test_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``root/train/<class>/<i>.<ext>`` (and ``root/test/...``) as 32x32 RGB; return root.

    Files are named ``0000.<ext>``, ``0001.<ext>``, ... within each class. PNG is
    lossless, so ``read_png_folder``-style pixel comparisons are exact.
    """
    root = Path(root)
    _write_split(root / "train", n_per_class, classes, ext, seed)
    if with_test:
        _write_split(root / "test", n_test_per_class, classes, ext, seed + 1)
    return root


class _Py2Str(bytes):
    """A byte string pickled the way Python 2 pickled ``str`` (opcode SHORT_BINSTRING).

    The official CIFAR-10 batches were written by Python 2: their keys load as bytes
    with ``encoding="bytes"`` and as str with ``encoding="latin1"`` (torchvision's
    choice). Keys written this way behave identically under both.
    """


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler lets us add one opcode
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj: _Py2Str) -> None:
        data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2str


class _OfficialPickler(_Py2Pickler):
    """Pickles the way the official files were written (Python 2 cPickle, numpy 1.x):
    every ``str`` and ``bytes`` as a Python 2 str, numpy's globals under ``numpy.core``
    (numpy >= 2 writes ``numpy._core``; Python 3 writes bytes as ``_codecs.encode``)."""

    dispatch = dict(_Py2Pickler.dispatch)
    dispatch[str] = lambda self, obj: self._save_py2str(_Py2Str(obj.encode("latin1")))
    dispatch[bytes] = _Py2Pickler._save_py2str

    def save_global(self, obj: object, name: str | None = None) -> None:
        name = name or obj.__qualname__
        module = pickle.whichmodule(obj, name).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode())
        self.memoize(obj)


def _dump_py2(obj: object, path: Path, official: bool = False) -> None:
    buf = io.BytesIO()
    (_OfficialPickler if official else _Py2Pickler)(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def _batch_dict(labels: list[int], seed: int, name: str) -> dict:
    images = fake_images(labels, seed=seed)  # (N, 32, 32, 3)
    # official row layout: 1024 red, then 1024 green, then 1024 blue values, row-major
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(labels), 3072))
    return {
        _Py2Str(b"batch_label"): _Py2Str(name.encode()),
        _Py2Str(b"labels"): labels,
        _Py2Str(b"data"): data,
        _Py2Str(b"filenames"): [_Py2Str(f"fake_{i:05d}.png".encode()) for i in range(len(labels))],
    }


def _cyclic_labels(n: int, offset: int) -> list[int]:
    return [(offset + i) % len(CLASSES) for i in range(n)]


def write_python_layout(
    root: Path, n_train: int = 50, n_test: int = 20, seed: int = 0, *, official: bool = False
) -> Path:
    """Write ``root/cifar-10-batches-py/`` in the official pickle format; return root.

    ``n_train`` images are spread over ``data_batch_1..5`` (the first batches get the
    remainder); labels cycle through the 10 classes. ``test_batch`` holds ``n_test``
    images and ``batches.meta`` the class names. With ``official``, the pickles use
    the very globals and opcodes of the official files (Python 2, numpy 1.x); without,
    numpy's globals are those of the installed numpy.
    """
    root = Path(root)
    out = root / PYTHON_DIR
    out.mkdir(parents=True, exist_ok=True)
    sizes = [n_train // 5 + (1 if b < n_train % 5 else 0) for b in range(5)]
    start = 0
    for b, size in enumerate(sizes):
        labels = _cyclic_labels(size, start)
        _dump_py2(
            _batch_dict(labels, seed + b, f"training batch {b + 1} of 5"),
            out / f"data_batch_{b + 1}",
            official,
        )
        start += size
    _dump_py2(
        _batch_dict(_cyclic_labels(n_test, 0), seed + 100, "testing batch 1 of 1"),
        out / "test_batch",
        official,
    )
    meta = {
        _Py2Str(b"num_cases_per_batch"): max(sizes),
        _Py2Str(b"label_names"): [_Py2Str(c.encode()) for c in CLASSES],
        _Py2Str(b"num_vis"): 3072,
    }
    _dump_py2(meta, out / "batches.meta", official)
    return root


def python_layout_arrays(root: Path, split: str) -> tuple[np.ndarray, list[int]]:
    """Read back a fabricated python-layout split as (N, 3, 32, 32) uint8 and labels.

    Independent of the package's reader, for tests that compare against it.
    """
    names = [f"data_batch_{b}" for b in range(1, 6)] if split == "train" else ["test_batch"]
    data, labels = [], []
    for name in names:
        with open(Path(root) / PYTHON_DIR / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        data.append(d[b"data"].reshape(-1, 3, 32, 32))
        labels += d[b"labels"]
    return np.concatenate(data), labels


def write_python_tarball(path: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> Path:
    """Write a ``cifar-10-python.tar.gz`` like the official one (members under
    ``cifar-10-batches-py/``) at ``path``; return path."""
    path = Path(path)
    staging = path.parent / (path.name + ".staging")
    write_python_layout(staging, n_train=n_train, n_test=n_test, seed=seed)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging / PYTHON_DIR, arcname=PYTHON_DIR)
    shutil.rmtree(staging)
    return path

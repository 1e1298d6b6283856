"""CIFAR-10 on disk -> uint8 tensors: layout detection, download, decoding and the decode cache.

Two layouts are read under a data directory:

1. the *python* layout, ``<data_dir>/cifar-10-batches-py/`` (``data_batch_1..5``,
   ``test_batch``, ``batches.meta``), as in the official ``cifar-10-python.tar.gz``;
2. the *image-folder* layout, ``<data_dir>/train/<class>/*.png|jpg|jpeg`` with an
   optional ``<data_dir>/test/<class>/*``; classes in sorted order.

A split is decoded once into ``images`` (N, 3, 32, 32) uint8 and ``labels`` (N,) int64
and cached in ``<data_dir>/.groupwise_cache/<split>.pt``, keyed by a fingerprint of the
source files (relative path, size and mtime of each), so editing the source rebuilds it.
A file rewritten with its old size and mtime (``rsync -a``, a backup restore) keeps the
fingerprint, so the cache also holds each file's sha256 and ctime: the ctime changes with
every write and no tool can set it back, and a file whose ctime differs is hashed and
read anew if its content differs (if not, the cache records the new ctime).

torchvision's ``CIFAR10`` reads only the python layout and ``ImageFolder`` decodes every
image on every access with PIL; neither gives the whole split as one tensor or caches
the decode. This module does that, and uses torchvision for the download.

Bad input is an error naming the file and what was expected, raised before the cache is
touched: python batches are unpickled with :mod:`groupwise.data.safe_pickle` (plain data
and plain numeric numpy arrays only, every dtype and array state checked before numpy sees
it, so a crafted batch can neither run code nor turn its bytes into object pointers) and
checked against the official format (uint8 ``data`` of shape (N, 3072), N ``labels`` in
range); images must decode completely and be 32x32; ``test/`` must have the class dirs of
``train/``.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from groupwise.data import safe_pickle
from groupwise.errors import UserError

Layout = Literal["python", "image_folder"]
SplitName = Literal["train", "test"]

PYTHON_DIR = "cifar-10-batches-py"
PYTHON_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
PYTHON_META = "batches.meta"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_DIR = ".groupwise_cache"
CACHE_FORMAT = 2  # bump when the cached payload changes meaning (2: ctimes and sha256s)
IMAGE_SHAPE = (3, 32, 32)


class CIFAR10NotFoundError(UserError, FileNotFoundError):
    """No CIFAR-10 data (or not the requested split) where it was looked for."""


class CIFAR10DownloadError(UserError, RuntimeError):
    """Downloading or checking the official archive failed."""


class CIFAR10FileError(UserError, ValueError):
    """A source file is unreadable, corrupt or has the wrong shape."""


@dataclass(frozen=True)
class Split:
    """One decoded split: ``images`` (N, 3, 32, 32) uint8, ``labels`` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]


def layouts_help(data_dir: Path, download: bool = True) -> str:
    """The accepted layouts and how to get the data, for error messages (``download``:
    with the download among the ways)."""
    layouts = (
        f"Accepted layouts under {data_dir}:\n"
        f"  1. python layout: {data_dir / PYTHON_DIR}/ (data_batch_1..5, test_batch,"
        " batches.meta), as in the official cifar-10-python.tar.gz;\n"
        f"  2. image-folder layout: {data_dir / 'train'}/<class>/*.png|jpg|jpeg, optionally"
        f" {data_dir / 'test'}/<class>/*; classes in sorted order."
    )
    if not download:
        return layouts
    return layouts + (
        "\nTo get the data: set download: true (needs network) to fetch the official archive"
        f" into {data_dir}, or extract an archive there yourself, e.g. {EXTRACT}."
    )


EXTRACT = (
    "`tar xzf cifar10-jpeg-train.tar.gz -C data` gives data/cifar10-jpeg/train/...,"
    " then set data_dir: data/cifar10-jpeg"
)


def missing_folder_message(data_dir: Path) -> str:
    """What to do about a ``data_dir`` that does not exist: the nearest folder that does (the
    deepest existing one on its path, or a folder in it with a close name), the layouts, and
    the download as a choice: make the folder first."""
    existing = next(parent for parent in data_dir.parents if parent.is_dir())
    missing = data_dir.relative_to(existing).parts[0]
    folders = [child.name for child in existing.iterdir() if child.is_dir()]
    close = difflib.get_close_matches(missing, folders, n=1)
    nearest = existing / close[0] if close else existing
    return (
        f"data_dir {data_dir} does not exist; the nearest existing folder is {nearest}.\n"
        + layouts_help(data_dir, download=False)
        + "\nTo get the data: give the folder that holds it, or extract an archive, e.g."
        f" {EXTRACT}; or, to download the official archive into {data_dir} (needs network),"
        f" mkdir -p {data_dir}, then run again with download: true."
    )


def detect_layout(data_dir: str | os.PathLike) -> Layout | None:
    """The layout present in ``data_dir``: python first, then image folder; None if neither."""
    data_dir = Path(data_dir)
    if (data_dir / PYTHON_DIR).is_dir():
        return "python"
    if (data_dir / "train").is_dir():
        return "image_folder"
    return None


def download_cifar10(data_dir: str | os.PathLike) -> None:
    """Download the official ``cifar-10-python.tar.gz`` into ``data_dir``, check its md5
    and extract it to ``data_dir/cifar-10-batches-py``, with torchvision's own machinery
    (URL and checksum from ``torchvision.datasets.CIFAR10``)."""
    # CIFAR10(root, download=True) would also load the whole training set and md5-check
    # each batch file; downloading the archive it names is all we need here.
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity, download_and_extract_archive

    data_dir = Path(data_dir)
    archive = data_dir / CIFAR10.filename
    before = _file_state(archive)
    try:
        download_and_extract_archive(
            CIFAR10.url, str(data_dir), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
        )
    except Exception as e:  # URLError, OSError, RuntimeError, tarfile errors...
        reason = f"{type(e).__name__}: {e}"
        if archive.exists() and not check_integrity(str(archive), CIFAR10.tgz_md5):
            if _file_state(archive) != before:  # written by this attempt: truncated or wrong
                archive.unlink()  # it would only confuse the next try
                reason = f"the file's md5 checksum is not {CIFAR10.tgz_md5} (removed it)"
            else:  # someone else's file: leave it, say what is wrong with it
                reason += (
                    f"; and the {archive} already there is not the official archive (its md5"
                    f" checksum is not {CIFAR10.tgz_md5}): delete or replace it"
                )
        raise CIFAR10DownloadError(
            f"Downloading CIFAR-10 from {CIFAR10.url} into {data_dir} failed: {reason}.\n"
            + layouts_help(data_dir)
        ) from e
    if detect_layout(data_dir) != "python":
        raise CIFAR10DownloadError(
            f"{archive} was downloaded and extracted but {data_dir / PYTHON_DIR} is missing.\n"
            + layouts_help(data_dir)
        )


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns) of ``path``, None if it does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def ensure_data(data_dir: str | os.PathLike, download: bool) -> Layout:
    """Detect the layout in ``data_dir``; download the python layout if there is none and
    ``download`` is set; raise ``CIFAR10NotFoundError`` if there is still none."""
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    if layout is not None:
        return layout
    if not data_dir.exists():  # a typo, most likely: never a download into a new folder
        raise CIFAR10NotFoundError(missing_folder_message(data_dir))
    if not download:
        raise CIFAR10NotFoundError(
            f"No CIFAR-10 data found in {data_dir} (download is off).\n" + layouts_help(data_dir)
        )
    download_cifar10(data_dir)
    return "python"


# ---- listing and fingerprints ---------------------------------------------------------


def _image_folder_classes(split_dir: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )


def _list_image_folder(
    split_dir: Path, classes: Sequence[str]
) -> tuple[list[str], list[int], list[tuple[int, int, int]]]:
    """Relative paths (``<class>/<file>``), labels and (size, mtime_ns, ctime_ns) of the images in
    ``split_dir``, class by class in ``classes`` order, files in sorted name order (the
    order torchvision's ImageFolder uses). Only direct children of class dirs are read;
    other entries (not hidden ones) are skipped with a warning that names them."""
    if not classes:
        raise CIFAR10NotFoundError(
            f"No class directories in {split_dir}: the image-folder layout needs"
            f" {split_dir}/<class>/*{'|'.join(IMAGE_EXTENSIONS)}, one directory per class."
        )
    rel_paths: list[str] = []
    labels: list[int] = []
    stats: list[tuple[int, int, int]] = []
    skipped: list[str] = []
    for label, cls in enumerate(classes):
        entries, others = [], []
        # os.scandir + DirEntry.stat is ~2x faster than pathlib for 50,000 files
        with os.scandir(split_dir / cls) as it:
            for e in it:
                if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file():
                    entries.append(e)
                elif not e.name.startswith("."):  # .DS_Store and the like: silently
                    others.append(e.name)
        if not entries:
            holds = f"; it holds only {sorted(others)[:5]}" if others else ""
            raise CIFAR10NotFoundError(
                f"No images ({'|'.join(IMAGE_EXTENSIONS)}) in class directory"
                f" {split_dir / cls}{holds}"
            )
        skipped += (f"{cls}/{name}" for name in others)
        entries.sort(key=lambda e: e.name)
        for e in entries:
            st = e.stat()
            rel_paths.append(f"{cls}/{e.name}")
            labels.append(label)
            stats.append((st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    if skipped:
        shown = ", ".join(sorted(skipped)[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(
            f"Ignoring {len(skipped)} {'entry' if len(skipped) == 1 else 'entries'} in the"
            f" class directories of {split_dir} that are not {'|'.join(IMAGE_EXTENSIONS)}"
            f" files: {shown}",
            stacklevel=3,
        )
    return rel_paths, labels, stats


def _fingerprint(layout: Layout, split: str, entries: Sequence[tuple[str, int, int]]) -> str:
    """sha256 of the layout, split and every (relative path, size, mtime_ns)."""
    h = hashlib.sha256(f"{CACHE_FORMAT}|{layout}|{split}\n".encode())
    h.update("\n".join(f"{p}|{s}|{m}" for p, s, m in entries).encode())
    return h.hexdigest()


# ---- decoding -----------------------------------------------------------------------------


def decode_images(paths: Sequence[Path]) -> torch.Tensor:
    """Decode image files to one uint8 tensor (N, 3, 32, 32), RGB, with Pillow.

    Raises ``CIFAR10FileError`` naming the file if one cannot be read or decoded or is
    not 32x32.
    """
    # Pillow, not torchvision.io.decode_image: that is ~3x faster here (1.6 s vs 5.6 s
    # for the 50,000 JPEGs) but deprecated since torchvision 0.29, and this runs once.
    # np.asarray loads the whole image, so a truncated PNG or JPEG raises OSError
    # ("image file is truncated") unless PIL.ImageFile.LOAD_TRUNCATED_IMAGES was set.
    out = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                size = image.size
                if size == (32, 32):
                    out[i] = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except (OSError, ValueError) as e:  # UnidentifiedImageError is an OSError
            raise CIFAR10FileError(
                f"Cannot read image {path}: {e}. Every {'|'.join(IMAGE_EXTENSIONS)} file in a"
                " class directory must be a complete 32x32 image: replace or delete this one."
            ) from e
        if size != (32, 32):
            raise CIFAR10FileError(
                f"Image {path} is {size[1]}x{size[0]} (HxW); CIFAR-10 images must be 32x32"
            )
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _refetch_hint(path: Path) -> str:
    return (
        f"Delete {path.parent} and load again with download: true to fetch the official"
        " archive (or extract cifar-10-python.tar.gz there yourself)."
    )


def _unpickle(path: Path) -> dict[str, object]:
    """Load an official CIFAR batch file; keys as str whichever Python wrote it."""
    try:
        with open(path, "rb") as f:
            # the official format is a Python 2 pickle: str loads as bytes
            raw = safe_pickle.load(f, encoding="bytes")
    except FileNotFoundError as e:
        raise CIFAR10NotFoundError(f"Missing CIFAR-10 batch file {path}") from e
    except safe_pickle.ForbiddenGlobalError as e:
        raise CIFAR10FileError(
            f"Refusing to load CIFAR-10 batch file {path}: unpickling it would call"
            f" {e.module}.{e.name}, which the official format never uses ({e}). "
            + _refetch_hint(path)
        ) from e
    except safe_pickle.RefusedPickleError as e:  # a crafted numpy dtype, array or call
        raise CIFAR10FileError(
            f"Refusing to load CIFAR-10 batch file {path}: {e}. The official format holds"
            " only numbers, byte strings, lists, dicts and numpy arrays of plain numeric"
            " types. " + _refetch_hint(path)
        ) from e
    except Exception as e:  # EOFError, UnpicklingError, ValueError... on cut or garbage bytes
        raise CIFAR10FileError(
            f"Cannot read CIFAR-10 batch file {path}: it is truncated or corrupt"
            f" ({type(e).__name__}: {e}). " + _refetch_hint(path)
        ) from e
    if not isinstance(raw, dict):
        raise CIFAR10FileError(
            f"{path} holds a {type(raw).__name__}, not the dict of a CIFAR-10 batch file. "
            + _refetch_hint(path)
        )
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _batch_arrays(
    path: Path, batch: dict[str, object], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (N, 3072) uint8 and ``labels`` (N,) int64 of a loaded batch file, checked
    against the official format: raises ``CIFAR10FileError`` naming the file, the bad value
    and what was expected."""
    for key in ("data", "labels"):
        if key not in batch:
            raise CIFAR10FileError(
                f"{path} has no {key!r} entry (it has {sorted(batch)}); a CIFAR-10 batch"
                " holds 'data' and 'labels'. " + _refetch_hint(path)
            )
    data = batch["data"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
    ):
        got = (
            f"an array of dtype {data.dtype} and shape {data.shape}"
            if isinstance(data, np.ndarray)
            else f"a {type(data).__name__}"
        )
        raise CIFAR10FileError(
            f"{path}: 'data' is {got}; expected a uint8 array of shape (N, 3072), one row of"
            " 3x32x32 pixel values per image. " + _refetch_hint(path)
        )
    try:
        labels = np.asarray(batch["labels"])
    except ValueError:  # ragged nested lists
        labels = np.asarray(batch["labels"], dtype=object)
    if labels.size == 0 and labels.ndim == 1:
        labels = labels.astype(np.int64)  # [] loads as float64
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        raise CIFAR10FileError(
            f"{path}: 'labels' is an array of dtype {labels.dtype} and shape {labels.shape};"
            f" expected {len(data)} integer labels, one per row of 'data'. " + _refetch_hint(path)
        )
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise CIFAR10FileError(
            f"{path}: label {labels[bad[0]]} at index {bad[0]} is out of range ({len(bad)} of"
            f" {len(labels)} labels are); labels must be in [0, {num_classes - 1}] for the"
            f" {num_classes} classes of {PYTHON_META}. " + _refetch_hint(path)
        )
    return data, labels.astype(np.int64)


def read_python_split(data_dir: Path, split: SplitName) -> Split:
    """Read a split of the python layout (no cache)."""
    base = Path(data_dir) / PYTHON_DIR
    classes = read_classes(data_dir)
    images, labels = [], []
    for name in PYTHON_FILES[split]:
        data, batch_labels = _batch_arrays(base / name, _unpickle(base / name), len(classes))
        images.append(torch.from_numpy(data.reshape(-1, *IMAGE_SHAPE)))
        labels.append(torch.from_numpy(batch_labels))
    return Split(torch.cat(images), torch.cat(labels), classes)


# ---- the cache ------------------------------------------------------------------------------


def cache_path(data_dir: str | os.PathLike, split: str) -> Path:
    """Where the decoded ``split`` of ``data_dir`` is cached."""
    return Path(data_dir) / CACHE_DIR / f"{split}.pt"


def _sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _sha256s(files: Sequence[Path]) -> torch.Tensor:
    """The sha256 of each file's content, (N, 32) uint8."""
    try:
        digests = b"".join(_sha256(f) for f in files)
    except OSError as e:
        raise CIFAR10FileError(f"Cannot read CIFAR-10 source file {e.filename}: {e}") from e
    return torch.frombuffer(bytearray(digests), dtype=torch.uint8).view(-1, 32)


def _unchanged(payload: dict, files: Sequence[Path], ctimes: Sequence[int]) -> list[int] | None:
    """Indices of the files whose ctime differs from the cached one but whose content
    does not (hashed now); None if a file's content differs or the payload has no
    ctimes and sha256s for these files."""
    cached_ctimes, digests = payload.get("ctimes"), payload.get("digests")
    if not (
        isinstance(cached_ctimes, torch.Tensor)
        and isinstance(digests, torch.Tensor)
        and cached_ctimes.shape == (len(files),)
        and digests.shape == (len(files), 32)
    ):
        return None
    changed = torch.nonzero(torch.tensor(ctimes, dtype=torch.int64) != cached_ctimes)
    changed = changed.flatten().tolist()
    try:
        if any(_sha256(files[i]) != bytes(digests[i].tolist()) for i in changed):
            return None
    except OSError:  # gone since it was listed: the rebuild says so
        return None
    return changed


def _read_cache(
    path: Path, fingerprint: str, files: Sequence[Path], ctimes: Sequence[int]
) -> Split | None:
    """The cached split if its fingerprint matches and no source file's content changed;
    rewrites the cache with the new ctimes of files whose content was hashed unchanged."""
    if not path.is_file():
        return None
    try:
        # mmap: nothing is read until used, so checking the fingerprint is free and the
        # caller copies out only the rows it indexes
        payload = torch.load(path, weights_only=True, mmap=True)
    except Exception as e:  # truncated or foreign file: rebuild it
        warnings.warn(f"Ignoring unreadable CIFAR-10 cache {path}: {e}", stacklevel=3)
        return None
    if (
        not isinstance(payload, dict)
        or payload.get("format") != CACHE_FORMAT
        or payload.get("fingerprint") != fingerprint
    ):
        return None
    same_content = _unchanged(payload, files, ctimes)
    if same_content is None:
        return None
    split = Split(payload["images"], payload["labels"], list(payload["classes"]))
    if same_content:  # so that the next load need not hash them again
        _write_cache(path, fingerprint, split, ctimes, payload["digests"])
    return split


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_cache(
    path: Path, fingerprint: str, split: Split, ctimes: Sequence[int], digests: torch.Tensor
) -> None:
    """Write atomically (temp file in the same dir, then ``os.replace``), so a failure at
    any point leaves the previous file, if any, as it was and no temp file behind; a
    read-only or full disk only costs a warning."""
    payload = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "images": split.images,
        "labels": split.labels,
        "classes": split.classes,
        "ctimes": torch.tensor(ctimes, dtype=torch.int64),
        "digests": digests,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it the usual mode
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except (OSError, RuntimeError) as e:  # torch.save reports some write errors as RuntimeError
        warnings.warn(f"Could not write CIFAR-10 cache {path}: {e}", stacklevel=3)


# ---- the entry point ------------------------------------------------------------------------


def has_split(data_dir: str | os.PathLike, split: SplitName) -> bool:
    """Whether ``split`` exists in the layout present in ``data_dir``."""
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    if layout == "python":
        return (data_dir / PYTHON_DIR / PYTHON_FILES[split][0]).is_file()
    if layout == "image_folder":
        return (data_dir / split).is_dir()
    return False


CIFAR10_CLASSES: tuple[str, ...] = (
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


def read_classes(data_dir: str | os.PathLike) -> list[str]:
    """Class names of the data in ``data_dir`` without decoding anything: the python
    layout's ``batches.meta``, or the sorted class dirs of ``train/``; the official
    CIFAR-10 names when there is no data yet (what a download would bring)."""
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    if layout == "python":
        path = data_dir / PYTHON_DIR / PYTHON_META
        names = _unpickle(path).get("label_names")
        if not (
            isinstance(names, list) and names and all(isinstance(c, bytes | str) for c in names)
        ):
            raise CIFAR10FileError(
                f"{path}: 'label_names' is {names!r:.200}; expected a non-empty list of class"
                " names (airplane, automobile, ...). " + _refetch_hint(path)
            )
        return [c.decode() if isinstance(c, bytes) else c for c in names]
    if layout == "image_folder":
        return _image_folder_classes(data_dir / "train")
    return list(CIFAR10_CLASSES)


# the official number of images of each split: what a download brings
CIFAR10_SIZES: dict[str, int] = {"train": 50_000, "test": 10_000}


def count_images(data_dir: str | os.PathLike, split: SplitName) -> int:
    """The number of images in ``split`` without decoding any: the image files of the
    image-folder layout, the labels of the python layout's batch files; the official
    CIFAR-10 size when ``data_dir`` holds no data yet (what a download would bring)."""
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    if layout == "python":
        base = data_dir / PYTHON_DIR
        return sum(len(_unpickle(base / name).get("labels", ())) for name in PYTHON_FILES[split])
    if layout == "image_folder" and (data_dir / split).is_dir():
        split_dir = data_dir / split
        return sum(
            1
            for cls in _image_folder_classes(split_dir)
            for name in os.listdir(split_dir / cls)
            if name.lower().endswith(IMAGE_EXTENSIONS)
        )
    if layout is None:
        return CIFAR10_SIZES[split]
    raise CIFAR10NotFoundError(f"No {split} split in {data_dir}")


def load_split(data_dir: str | os.PathLike, split: SplitName, cache: bool = True) -> Split:
    """Decoded ``split`` ("train" or "test") of the data in ``data_dir``.

    With ``cache``, reads ``<data_dir>/.groupwise_cache/<split>.pt`` when its
    fingerprint matches the source, else decodes and (re)writes it. Tensors read from
    the cache are memory-mapped copy-on-write: writing to them never changes the file.
    """
    data_dir = Path(data_dir)
    layout = detect_layout(data_dir)
    if layout is None:
        raise CIFAR10NotFoundError(
            f"No CIFAR-10 data found in {data_dir}.\n" + layouts_help(data_dir)
        )
    if not has_split(data_dir, split):
        where = (
            data_dir / PYTHON_DIR / PYTHON_FILES[split][0]
            if layout == "python"
            else data_dir / split / "<class>" / "*"
        )
        raise CIFAR10NotFoundError(
            f"The CIFAR-10 data in {data_dir} ({layout} layout) has no {split} split:"
            f" expected {where}."
        )

    if layout == "python":
        base = data_dir / PYTHON_DIR
        names = (*PYTHON_FILES[split], PYTHON_META)
        entries, ctimes = [], []
        for name in names:
            try:
                st = (base / name).stat()
            except FileNotFoundError as e:
                raise CIFAR10NotFoundError(f"Missing CIFAR-10 batch file {base / name}") from e
            entries.append((name, st.st_size, st.st_mtime_ns))
            ctimes.append(st.st_ctime_ns)
        files = [base / name for name in names]
    else:
        split_dir = data_dir / split
        classes = _image_folder_classes(split_dir)
        if split == "test":
            train_classes = _image_folder_classes(data_dir / "train")
            if classes != train_classes:
                missing = sorted(set(train_classes) - set(classes))
                extra = sorted(set(classes) - set(train_classes))
                diff = "; ".join(
                    f"{what} {names}"
                    for what, names in (("missing", missing), ("extra", extra))
                    if names
                )
                raise CIFAR10FileError(
                    f"Class directories of {split_dir} {classes} differ from those of"
                    f" {data_dir / 'train'} {train_classes} ({diff}); they must be the same,"
                    " so that a label means the same class in both."
                )
        rel_paths, labels, stats = _list_image_folder(split_dir, classes)
        entries = [(p, s, m) for p, (s, m, _) in zip(rel_paths, stats, strict=True)]
        ctimes = [c for _, _, c in stats]
        files = [split_dir / p for p in rel_paths]

    fingerprint = _fingerprint(layout, split, entries)
    path = cache_path(data_dir, split)
    if cache and path.parent.is_symlink():
        cache = False  # a folder shipped as a link elsewhere: write nothing there
        warnings.warn(
            f"{data_dir / CACHE_DIR} is a symlink (to {os.readlink(path.parent)}): the decoded"
            " images are not cached (a run writes its cache only inside the data folder);"
            " remove the link to cache them",
            stacklevel=2,
        )
    if cache and (hit := _read_cache(path, fingerprint, files, ctimes)) is not None:
        return hit

    # hashed before decoding: a file that changes from here on gets a new ctime, so the
    # next load hashes it again and finds that its content differs from this hash
    digests = _sha256s(files) if cache else None
    if layout == "python":
        result = read_python_split(data_dir, split)
    else:
        images = decode_images([split_dir / p for p in rel_paths])
        result = Split(images, torch.tensor(labels, dtype=torch.int64), classes)
    if cache:
        _write_cache(path, fingerprint, result, ctimes, digests)
    return result

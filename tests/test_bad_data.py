"""Bad CIFAR-10 input: every fault is an error naming the file, the bad value and what is
valid, and leaves everything already on disk (other files, a valid cache) as it was.

Faults are injected into tiny fabricated data sets in ``tmp_path``; the only network
is 127.0.0.1.
"""

from __future__ import annotations

import builtins
import io
import os
import pathlib
import pickle
import re
import shlex
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_cifar import CLASSES, python_layout_arrays, write_image_folder, write_python_layout
from file_snapshot import snapshot
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.datasets import CIFAR10

from groupwise.data import cifar10_files, safe_pickle
from groupwise.data.cifar10 import CIFAR10DataModule
from groupwise.data.cifar10_files import (
    CIFAR10DownloadError,
    CIFAR10FileError,
    CIFAR10NotFoundError,
    cache_path,
    ensure_data,
    load_split,
    read_classes,
)

BATCHES = "cifar-10-batches-py"


def python_root_with_test_cache(tmp_path: Path) -> Path:
    """A python layout whose test split is already decoded into a valid cache."""
    root = write_python_layout(tmp_path / "data", n_train=10, n_test=4)
    load_split(root, "test")
    assert cache_path(root, "test").is_file()
    return root


def assert_unchanged_and_no_cache(root: Path, before: dict, split: str = "train") -> None:
    assert snapshot(root) == before  # nothing written, changed or deleted
    assert not cache_path(root, split).exists()
    assert not list(root.rglob("*.tmp"))


def dump(obj: object, path: Path, protocol: int = 2) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def batch(data: object, labels: object) -> dict:
    return {"batch_label": "fabricated", "data": data, "labels": labels}


def good_data(n: int) -> np.ndarray:
    return np.zeros((n, 3072), np.uint8)


# ---- 1. pickles that would run code -------------------------------------------------------


class Payload:
    """Unpickles as ``func(*args)``: the classic pickle exploit."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, tuple[Payload, int]]:
    """Payloads that each create ``marker`` when unpickled, and the protocol to write."""
    return {
        "os.system": (Payload(os.system, f"touch {shlex.quote(str(marker))}"), 2),
        "builtins.open": (Payload(builtins.open, str(marker), "w"), 2),
        "builtins.exec": (Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"), 4),
        "pathlib.Path.write_text": (Payload(pathlib.Path.write_text, marker, "x"), 4),
        # a function of an allowed module (numpy) is still refused
        "numpy.save": (Payload(np.save, str(marker), np.zeros(1)), 2),
    }


# the global each pickle names: where the function lives (posix.system on Linux, io.open)
REFUSED = {
    "os.system": f"{os.system.__module__}.system",
    "builtins.open": f"{builtins.open.__module__}.open",
    "builtins.exec": "builtins.exec",
    "pathlib.Path.write_text": "pathlib.Path.write_text",
    "numpy.save": "numpy.save",
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_malicious_batch_is_refused_without_running_it(tmp_path, kind):
    # the payload is real: plain pickle runs it and the marker appears
    control = tmp_path / "control.npy"
    payload, protocol = payloads(control)[kind]
    pickle.loads(pickle.dumps(payload, protocol=protocol))
    assert control.exists()

    root = python_root_with_test_cache(tmp_path)
    marker = tmp_path / "marker.npy"
    payload, protocol = payloads(marker)[kind]
    bad = root / BATCHES / "data_batch_1"
    # hidden in an otherwise well-formed batch
    dump(batch(good_data(2), [0, 1]) | {"extra": payload}, bad, protocol)
    before = snapshot(root)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "train")
    msg = str(info.value)
    assert not marker.exists()
    assert str(bad) in msg
    assert f"refused global {REFUSED[kind]}" in msg
    assert "numpy.ndarray" in msg and "numpy.core.multiarray._reconstruct" in msg  # allowed
    assert "download: true" in msg
    assert isinstance(info.value.__cause__, safe_pickle.ForbiddenGlobalError)
    assert_unchanged_and_no_cache(root, before)


def test_malicious_meta_file_is_refused(tmp_path):
    root = write_python_layout(tmp_path / "data", n_train=5)
    marker = tmp_path / "marker"
    meta = root / BATCHES / "batches.meta"
    dump({"label_names": list(CLASSES), "x": Payload(builtins.open, str(marker), "w")}, meta)
    refused = re.escape(f"refused global {REFUSED['builtins.open']}")
    with pytest.raises(CIFAR10FileError, match=refused) as info:
        read_classes(root)
    assert str(meta) in str(info.value) and not marker.exists()
    dm = CIFAR10DataModule(data_dir=str(root), download=False)
    with pytest.raises(CIFAR10FileError, match="refused global"):
        dm.prepare_data()
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_restricted_unpickler_loads_numpy_and_plain_data_of_every_protocol(protocol):
    obj = {
        "data": np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072),
        "fortran": np.asfortranarray(np.ones((2, 3), np.float32)),
        "labels": [np.int64(3), 4],  # numpy scalars need numpy's `scalar`
        "bytes": b"\x00\xff",  # Python 3 protocols 0-2: _codecs.encode
        "set": {1, 2},
        "frozenset": frozenset({b"x"}),
        "bytearray": bytearray(b"ab"),
        "complex": 1 + 2j,
    }
    out = safe_pickle.load(io.BytesIO(pickle.dumps(obj, protocol=protocol)), encoding="bytes")
    assert out.keys() == obj.keys()
    for key in ("data", "fortran"):
        assert out[key].dtype == obj[key].dtype and np.array_equal(out[key], obj[key])
    assert [out[k] for k in list(obj)[2:]] == [obj[k] for k in list(obj)[2:]]


def test_official_python2_numpy1_pickles_load(tmp_path, monkeypatch):
    """Files pickled like the official ones (Python 2 strs, numpy.core globals) load with
    the restricted unpickler exactly as torchvision's plain-pickle reader loads them."""
    root = write_python_layout(tmp_path, n_train=12, n_test=4, official=True)
    raw = (root / BATCHES / "data_batch_1").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"_codecs" not in raw
    train = load_split(root, "train", cache=False)
    images, labels = python_layout_arrays(root, "train")
    assert torch.equal(train.images, torch.from_numpy(images))
    assert train.labels.tolist() == labels and train.classes == list(CLASSES)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setitem(CIFAR10.meta, "md5", None)
    ref = CIFAR10(str(root), train=True)
    assert ref.targets == labels and np.array_equal(ref.data, images.transpose(0, 2, 3, 1))


def test_python2_builtin_names_are_mapped_and_checked():
    # protocol-2 pickles written by Python 2 (or by Python 3 for Python 2) say __builtin__
    assert safe_pickle.load(io.BytesIO(pickle.dumps({1, 2}, protocol=2))) == {1, 2}
    evil = b"\x80\x02c__builtin__\neval\nX\x03\x00\x00\x001+1\x85R."
    assert pickle.loads(evil) == 2  # what plain pickle would do
    with pytest.raises(safe_pickle.ForbiddenGlobalError, match=r"__builtin__\.eval") as info:
        safe_pickle.load(io.BytesIO(evil))
    assert (info.value.module, info.value.name) == ("__builtin__", "eval")
    assert isinstance(info.value, pickle.UnpicklingError)


def test_codecs_encode_only_with_latin1():
    ok = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R."
    assert safe_pickle.load(io.BytesIO(ok)) == b"\xff"
    bad = ok.replace(b"X\x06\x00\x00\x00latin1", b"X\x05\x00\x00\x00utf_7")
    with pytest.raises(pickle.UnpicklingError, match="'utf_7'.*'latin1' only"):
        safe_pickle.load(io.BytesIO(bad))


# ---- 2. truncated or corrupt batch files ---------------------------------------------------


def cut_half(b: bytes) -> bytes:
    return b[: len(b) // 2]


def cut_last_byte(b: bytes) -> bytes:
    return b[:-1]


def garbage(b: bytes) -> bytes:
    return np.random.default_rng(0).integers(0, 256, len(b), dtype=np.uint8).tobytes()


def empty(b: bytes) -> bytes:
    return b""


@pytest.mark.parametrize("damage", [cut_half, cut_last_byte, garbage, empty])
def test_truncated_or_corrupt_batch_names_the_file(tmp_path, damage):
    root = python_root_with_test_cache(tmp_path)
    bad = root / BATCHES / "data_batch_4"
    bad.write_bytes(damage(bad.read_bytes()))
    before = snapshot(root)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "train")
    msg = str(info.value)
    assert f"Cannot read CIFAR-10 batch file {bad}: it is truncated or corrupt" in msg
    assert f"Delete {root / BATCHES} and load again with download: true" in msg
    assert_unchanged_and_no_cache(root, before)


def test_batch_that_is_not_a_dict(tmp_path):
    root = python_root_with_test_cache(tmp_path)
    bad = root / BATCHES / "data_batch_2"
    dump([1, 2, 3], bad)
    with pytest.raises(CIFAR10FileError, match="holds a list, not the dict") as info:
        load_split(root, "train")
    assert str(bad) in str(info.value)


# ---- 3. batch files with the wrong content -------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "bad_value"), [([0, 10], "label 10 at index 1"), ([-1, 3], "label -1 at index 0")]
)
def test_label_out_of_range_names_file_value_and_range(tmp_path, labels, bad_value):
    root = python_root_with_test_cache(tmp_path)
    bad = root / BATCHES / "data_batch_3"
    dump(batch(good_data(2), labels), bad)
    before = snapshot(root)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "train")
    assert str(info.value).startswith(f"{bad}: {bad_value} is out of range (1 of 2 labels are)")
    assert "labels must be in [0, 9] for the 10 classes of batches.meta" in str(info.value)
    assert_unchanged_and_no_cache(root, before)


def test_label_range_follows_the_classes_of_the_meta_file(tmp_path):
    root = write_python_layout(tmp_path, n_train=5, n_test=2)
    dump({"label_names": ["a", "b", "c"]}, root / BATCHES / "batches.meta")
    dump(batch(good_data(3), [2, 3, 3]), root / BATCHES / "data_batch_1")
    with pytest.raises(
        CIFAR10FileError, match=r"label 3 at index 1 is out of range \(2 of 3 labels are\)"
    ) as info:
        load_split(root, "train")
    assert "must be in [0, 2] for the 3 classes" in str(info.value)


@pytest.mark.parametrize(
    ("data", "got"),
    [
        (np.zeros((2, 3071), np.uint8), "an array of dtype uint8 and shape (2, 3071)"),
        (np.zeros(2 * 3072, np.uint8), "an array of dtype uint8 and shape (6144,)"),
        (np.zeros((2, 3, 32, 32), np.uint8), "an array of dtype uint8 and shape (2, 3, 32, 32)"),
        (np.zeros((2, 3072), np.float32), "an array of dtype float32 and shape (2, 3072)"),
        ([[0] * 3072] * 2, "a list"),
    ],
)
def test_data_of_wrong_shape_or_type_names_file_shape_and_expected_shape(tmp_path, data, got):
    root = python_root_with_test_cache(tmp_path)
    bad = root / BATCHES / "data_batch_5"
    dump(batch(data, [0, 1]), bad)
    before = snapshot(root)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "train")
    assert str(info.value).startswith(
        f"{bad}: 'data' is {got}; expected a uint8 array of shape (N, 3072)"
    )
    assert_unchanged_and_no_cache(root, before)


@pytest.mark.parametrize(
    ("labels", "got"),
    [
        ([0, 1, 2], "an array of dtype int64 and shape (3,)"),
        ([0.0, 1.0], "an array of dtype float64 and shape (2,)"),
        ([[0], [1]], "an array of dtype int64 and shape (2, 1)"),
    ],
)
def test_labels_of_wrong_count_or_type(tmp_path, labels, got):
    root = python_root_with_test_cache(tmp_path)
    bad = root / BATCHES / "test_batch"
    dump(batch(good_data(2), labels), bad)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "test", cache=False)
    assert str(info.value).startswith(
        f"{bad}: 'labels' is {got}; expected 2 integer labels, one per row of 'data'"
    )


def test_missing_entry_and_bad_meta(tmp_path):
    root = write_python_layout(tmp_path, n_train=5, n_test=2)
    bad = root / BATCHES / "data_batch_1"
    dump({"data": good_data(1)}, bad)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "train")
    assert str(info.value).startswith(f"{bad} has no 'labels' entry (it has ['data'])")
    meta = root / BATCHES / "batches.meta"
    dump({"num_vis": 3072}, meta)
    with pytest.raises(CIFAR10FileError) as info:
        read_classes(root)
    assert str(info.value).startswith(f"{meta}: 'label_names' is None; expected a non-empty list")


# ---- 4. image folders ----------------------------------------------------------------------


def image_root_with_test_cache(tmp_path: Path, ext: str = "png") -> Path:
    """train/ and test/ with 3 classes; the test split already has a valid cache."""
    root = write_image_folder(
        tmp_path / "data", n_per_class=3, classes=CLASSES[:3], ext=ext, with_test=True
    )
    load_split(root, "test")
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])


def flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def garbage_after_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:16] + b"this is not image data" * 8)


@pytest.mark.parametrize(
    ("ext", "damage", "error"),
    [
        ("jpg", truncate, "(image file is truncated|Truncated File Read)"),
        ("jpg", garbage_after_header, ""),
        ("png", truncate, "(image file is truncated|Truncated File Read)"),
        ("png", flip_middle_byte, "broken data stream"),
        ("png", garbage_after_header, ""),
    ],
)
def test_truncated_or_corrupt_image_names_the_file(tmp_path, ext, damage, error):
    """Pillow decodes truncated files partially without complaint only when
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set; by default the whole image must be there."""
    root = image_root_with_test_cache(tmp_path, ext)
    # the last file decoded: every other image is decoded before the error
    bad = root / "train" / CLASSES[2] / f"0002.{ext}"
    damage(bad)
    before = snapshot(root)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "train")
    msg = str(info.value)
    assert re.match(f"Cannot read image {re.escape(str(bad))}: {error}", msg)
    assert "must be a complete 32x32 image: replace or delete this one" in msg
    assert_unchanged_and_no_cache(root, before)


def test_wrong_size_image_names_file_size_and_32x32(tmp_path):
    root = image_root_with_test_cache(tmp_path)
    bad = root / "train" / CLASSES[1] / "0001.png"
    Image.fromarray(np.zeros((64, 48, 3), np.uint8)).save(bad)
    before = snapshot(root)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "train")
    assert str(info.value) == f"Image {bad} is 64x48 (HxW); CIFAR-10 images must be 32x32"
    assert_unchanged_and_no_cache(root, before)


@pytest.mark.parametrize(
    ("change", "diff"),
    [("remove", "missing ['bird']"), ("add", "extra ['zebra']"), ("rename", None)],
)
def test_test_classes_differing_from_train_names_them_and_the_expected_list(tmp_path, change, diff):
    root = write_image_folder(tmp_path / "data", n_per_class=2, classes=CLASSES[:3])
    write_image_folder(tmp_path / "t", n_per_class=1, classes=CLASSES[:3])
    (tmp_path / "t" / "train").rename(root / "test")
    load_split(root, "train")  # a valid cache of the other split
    test_dir = root / "test"
    if change == "remove":
        for f in (test_dir / "bird").iterdir():
            f.unlink()
        (test_dir / "bird").rmdir()
    elif change == "add":
        (test_dir / "bird").rename(test_dir / "zebra")
        write_image_folder(tmp_path / "b", n_per_class=1, classes=["bird"])
        (tmp_path / "b" / "train" / "bird").rename(test_dir / "bird")
    else:
        (test_dir / "bird").rename(test_dir / "birds")
        diff = "missing ['bird']; extra ['birds']"
    before = snapshot(root)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "test")
    msg = str(info.value)
    assert f"({diff})" in msg
    assert f"{root / 'train'} ['airplane', 'automobile', 'bird']" in msg and str(test_dir) in msg
    assert_unchanged_and_no_cache(root, before, "test")


def test_unknown_extensions_are_skipped_with_a_warning_naming_them(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:2])
    cls = root / "train" / "airplane"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(cls / "0002.bmp")  # not read
    (cls / "README.txt").write_text("notes")
    (cls / "nested").mkdir()
    (cls / ".hidden").write_text("skipped silently")
    with pytest.warns(UserWarning) as record:
        split = load_split(root, "train")
    assert len(record) == 1
    assert str(record[0].message) == (
        f"Ignoring 3 entries in the class directories of {root / 'train'} that are not"
        " .png|.jpg|.jpeg files: airplane/0002.bmp, airplane/README.txt, airplane/nested"
    )
    assert split.labels.tolist() == [0, 0, 1, 1]


def test_class_directory_without_images_and_train_without_classes(tmp_path):
    root = write_image_folder(tmp_path / "a", n_per_class=1, classes=CLASSES[:2])
    empty = root / "train" / "automobile"
    for f in empty.iterdir():
        f.rename(f.with_suffix(".gif"))
    with pytest.raises(CIFAR10NotFoundError) as info:
        load_split(root, "train")
    assert str(info.value) == (
        f"No images (.png|.jpg|.jpeg) in class directory {empty}; it holds only ['0000.gif']"
    )
    bare = tmp_path / "b"
    (bare / "train").mkdir(parents=True)
    with pytest.raises(CIFAR10NotFoundError) as info:
        load_split(bare, "train")
    assert str(info.value).startswith(f"No class directories in {bare / 'train'}")
    assert f"{bare / 'train'}/<class>/*.png|.jpg|.jpeg" in str(info.value)


# ---- 5. no data and no network -------------------------------------------------------------


@pytest.fixture
def closed_port_url(monkeypatch) -> str:
    """The archive URL on a 127.0.0.1 port nobody listens on (no proxy in the way)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    monkeypatch.setattr(CIFAR10, "url", url)
    return url


def test_missing_data_and_no_network_names_url_path_layouts_and_remedies(tmp_path, closed_port_url):
    data_dir = tmp_path / "data"
    data_dir.mkdir()  # an empty folder: the download is what the user asked for
    with pytest.raises(CIFAR10DownloadError) as info:
        ensure_data(data_dir, download=True)
    msg = str(info.value)
    assert msg.startswith(
        f"Downloading CIFAR-10 from {closed_port_url} into {data_dir} failed: URLError:"
    )
    assert "Connection refused" in msg
    assert f"python layout: {data_dir / BATCHES}/" in msg
    assert f"image-folder layout: {data_dir / 'train'}/<class>/" in msg
    assert "set download: true (needs network)" in msg and "tar xzf" in msg
    with pytest.raises(CIFAR10DownloadError, match="Connection refused"):
        CIFAR10DataModule(data_dir=str(data_dir), download=True).prepare_data()


def test_failed_download_keeps_files_it_did_not_write(tmp_path, closed_port_url):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("mine")
    partial = data_dir / "cifar-10-python.tar.gz"
    partial.write_bytes(b"an earlier, partial download")
    before = snapshot(data_dir)
    with pytest.raises(CIFAR10DownloadError) as info:
        ensure_data(data_dir, download=True)
    assert snapshot(data_dir) == before
    msg = str(info.value)
    assert "Connection refused" in msg
    assert f"the {partial} already there is not the official archive" in msg
    assert f"md5 checksum is not {CIFAR10.tgz_md5}): delete or replace it" in msg


# ---- 6. failures never leave a partial cache or touch another split's ----------------------


def test_failed_rebuild_keeps_the_old_caches_and_writes_nothing(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=3, classes=CLASSES[:3], with_test=True)
    load_split(root, "train")
    load_split(root, "test")
    # the source changes (so train must be rebuilt) and its last image is corrupt:
    # decoding fails after the other 8 images
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "bird" / "0003.png")
    bad = root / "train" / "bird" / "0004.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    before = snapshot(root)
    with pytest.raises(CIFAR10FileError, match="Cannot read image"):
        load_split(root, "train")
    assert snapshot(root) == before  # old train.pt and test.pt as they were, no temp file
    assert not list(root.rglob("*.tmp"))
    bad.unlink()
    assert load_split(root, "train").labels.tolist() == [0] * 3 + [1] * 3 + [2] * 4


REAL_SAVE = torch.save


def failing_save(exc: BaseException):
    def save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        REAL_SAVE(obj, buf, *args, **kwargs)
        f.write(buf.getvalue()[:1000])  # half written, then the disk fails
        raise exc

    return save


def test_cache_write_failing_midway_warns_and_leaves_no_partial_file(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:2], with_test=True)
    load_split(root, "test")
    before = snapshot(root)
    monkeypatch.setattr(torch, "save", failing_save(RuntimeError("disk full")))
    with pytest.warns(UserWarning, match=r"Could not write CIFAR-10 cache .*train\.pt: disk full"):
        split = load_split(root, "train")
    assert split.labels.tolist() == [0, 0, 1, 1]  # the decoded split is still returned
    assert_unchanged_and_no_cache(root, before)
    monkeypatch.setattr(torch, "save", failing_save(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        load_split(root, "train")
    assert_unchanged_and_no_cache(root, before)


def test_prepare_data_failing_on_test_keeps_the_train_cache(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:2], with_test=True)
    bad = root / "test" / "automobile" / "0001.png"
    truncate(bad)
    dm = CIFAR10DataModule(data_dir=str(root), download=False, val_size=1)
    with pytest.raises(CIFAR10FileError, match=f"Cannot read image {bad}"):
        dm.prepare_data()
    assert not cache_path(root, "test").exists()
    decodes: list[int] = []
    monkeypatch.setattr(cifar10_files, "decode_images", lambda paths: decodes.append(len(paths)))
    assert load_split(root, "train").labels.tolist() == [0, 0, 1, 1]
    assert decodes == []  # read from the cache prepare_data wrote before failing


# ---- a data_dir that does not exist: a typo, never a download --------------------------------


def test_a_data_dir_that_does_not_exist_names_the_nearest_folder(tmp_path, closed_port_url):
    (tmp_path / "cifar10-jpeg" / "train").mkdir(parents=True)
    data_dir = tmp_path / "cifar10-jpg"
    before = snapshot(tmp_path)
    with pytest.raises(CIFAR10NotFoundError) as info:
        ensure_data(data_dir, download=True)
    msg = str(info.value)
    assert msg.startswith(
        f"data_dir {data_dir} does not exist; the nearest existing folder is"
        f" {tmp_path / 'cifar10-jpeg'}.\n"
    )
    assert "Downloading" not in msg and "URLError" not in msg  # nothing was tried
    # the download only as the user's choice: make the folder first
    assert f"mkdir -p {data_dir}" in msg and "download: true" in msg
    assert not data_dir.exists() and {p.name for p in tmp_path.iterdir()} == {"cifar10-jpeg"}
    assert snapshot(tmp_path) == before


def existing_and_missing(names: list[str], depth: int, extra: list[str]) -> tuple[Path, Path]:
    """(folders that exist, a path below them that does not), relative."""
    return Path(*names[:depth]), Path(*names[:depth], *extra)


FOLDER = st.text("abcdefghij-_", min_size=1, max_size=8)


# closed_port_url: one for all cases (a download tried by mistake fails, fetching nothing)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(FOLDER, min_size=1, max_size=3),
    depth=st.integers(0, 3),
    extra=st.lists(FOLDER, min_size=1, max_size=2),
    siblings=st.lists(FOLDER, max_size=3),
)
def test_a_missing_data_dir_is_named_and_nothing_is_made(
    tmp_path_factory, closed_port_url, names, depth, extra, siblings
):
    root = tmp_path_factory.mktemp("tree")
    existing, missing = existing_and_missing(names, min(depth, len(names)), extra)
    (root / existing).mkdir(parents=True, exist_ok=True)
    for name in siblings:
        (root / existing / name).mkdir(exist_ok=True)
    assume(not (root / missing).exists())
    before = sorted(root.rglob("*"))
    with pytest.raises(CIFAR10NotFoundError) as info:
        ensure_data(root / missing, download=True)
    msg = str(info.value)
    first = f"data_dir {root / missing} does not exist; the nearest existing folder is "
    assert msg.startswith(first)
    nearest = Path(msg[len(first) :].split(".\n", 1)[0])
    # the deepest folder that exists on the way, or one of its folders with a close name
    assert nearest == root / existing or nearest.parent == root / existing
    assert nearest.is_dir()
    assert sorted(root.rglob("*")) == before  # nothing made, nothing downloaded

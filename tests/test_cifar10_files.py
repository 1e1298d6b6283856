"""Reading CIFAR-10 from disk: both layouts, the decode cache, errors and the download."""

import functools
import hashlib
import http.server
import os
import pickle
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_cifar import (
    CLASSES,
    python_layout_arrays,
    write_image_folder,
    write_python_layout,
    write_python_tarball,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.datasets import CIFAR10

from groupwise.data import cifar10_files
from groupwise.data.cifar10_files import (
    CIFAR10DownloadError,
    CIFAR10FileError,
    CIFAR10NotFoundError,
    cache_path,
    detect_layout,
    download_cifar10,
    ensure_data,
    load_split,
    read_classes,
)


def png_pixels(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)


# ---- layouts --------------------------------------------------------------------------------


def test_image_folder_labels_in_sorted_class_order_and_exact_pixels(tmp_path):
    # classes written in unsorted order: labels must follow the sorted names
    classes = ["zebra", "ant", "moth"]
    root = write_image_folder(tmp_path, n_per_class=3, classes=classes, with_test=True)
    split = load_split(root, "train")
    assert split.classes == ["ant", "moth", "zebra"]
    assert split.labels.dtype == torch.int64 and split.images.dtype == torch.uint8
    assert split.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert split.images.shape == (9, 3, 32, 32)
    files = [
        root / "train" / c / f"{i:04d}.png" for c in ("ant", "moth", "zebra") for i in range(3)
    ]
    for i, f in enumerate(files):
        assert torch.equal(split.images[i], png_pixels(f)), f
    test = load_split(root, "test")
    assert test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(test.images[5], png_pixels(root / "test" / "zebra" / "0001.png"))


def test_image_folder_reads_jpeg_and_skips_other_files(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:2], ext="jpg")
    (root / "train" / "airplane" / "notes.txt").write_text("not an image")
    (root / "train" / "airplane" / ".DS_Store").write_bytes(b"hidden: skipped silently")
    with pytest.warns(UserWarning, match=r"Ignoring 1 entry .* not \.png\|\.jpg\|\.jpeg files"):
        split = load_split(root, "train", cache=False)
    assert split.labels.tolist() == [0, 0, 1, 1]
    # JPEG is lossy, so compare with Pillow's decode of the same file
    assert torch.equal(split.images[3], png_pixels(root / "train" / "automobile" / "0001.jpg"))


def test_python_layout_labels_classes_and_exact_pixels(tmp_path):
    root = write_python_layout(tmp_path, n_train=23, n_test=7)
    assert detect_layout(root) == "python"
    train = load_split(root, "train")
    want_images, want_labels = python_layout_arrays(root, "train")
    assert train.classes == list(CLASSES)
    assert train.labels.tolist() == want_labels == [i % 10 for i in range(23)]
    assert torch.equal(train.images, torch.from_numpy(want_images))
    test = load_split(root, "test")
    assert test.labels.tolist() == [i % 10 for i in range(7)]
    assert torch.equal(test.images, torch.from_numpy(python_layout_arrays(root, "test")[0]))


def test_fake_python_layout_is_read_the_same_by_torchvision(tmp_path, monkeypatch):
    """The fabricated batches load like the official ones with torchvision's reader too."""
    root = write_python_layout(tmp_path, n_train=12, n_test=4)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar10_files, "decode_images", None)  # not used for this layout
    monkeypatch.setitem(CIFAR10.meta, "md5", None)
    ref = CIFAR10(str(root), train=True)
    ours = load_split(root, "train")
    assert ref.classes == ours.classes
    assert ref.targets == ours.labels.tolist()
    assert torch.equal(torch.from_numpy(ref.data).permute(0, 3, 1, 2), ours.images)


def test_python_layout_wins_over_image_folder(tmp_path):
    write_image_folder(tmp_path, n_per_class=1)
    assert detect_layout(tmp_path) == "image_folder"
    write_python_layout(tmp_path, n_train=10)
    assert detect_layout(tmp_path) == "python"
    assert len(load_split(tmp_path, "train").labels) == 10


def test_read_classes_without_decoding(tmp_path):
    assert read_classes(tmp_path / "nothing") == list(CLASSES)
    write_image_folder(tmp_path / "f", n_per_class=1, classes=["b", "a"])
    assert read_classes(tmp_path / "f") == ["a", "b"]
    write_python_layout(tmp_path / "p", n_train=5)
    assert read_classes(tmp_path / "p") == list(CLASSES)


# ---- errors ---------------------------------------------------------------------------------


def test_missing_data_without_download_names_path_and_both_layouts(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CIFAR10NotFoundError) as info:
        ensure_data(missing, download=False)
    msg = str(info.value)
    assert str(missing) in msg
    assert "python layout" in msg and str(missing / "cifar-10-batches-py") in msg
    assert "image-folder layout" in msg and str(missing / "train") in msg
    assert "download: true" in msg and "tar xzf" in msg
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(CIFAR10NotFoundError, match="image-folder layout"):
        load_split(missing, "train")


def test_corrupt_image_names_the_file(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:2])
    bad = root / "train" / "automobile" / "0001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(CIFAR10FileError, match="Cannot read image") as info:
        load_split(root, "train")
    assert str(bad) in str(info.value)
    assert not cache_path(root, "train").exists()


def test_wrong_size_image_names_the_file_and_the_expected_size(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:2])
    bad = root / "train" / "airplane" / "0000.png"
    Image.fromarray(np.zeros((31, 32, 3), np.uint8)).save(bad)
    with pytest.raises(CIFAR10FileError) as info:
        load_split(root, "train")
    assert str(bad) in str(info.value)
    assert "31x32" in str(info.value) and "must be 32x32" in str(info.value)


def test_missing_test_split_is_a_clear_error(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=1)
    with pytest.raises(CIFAR10NotFoundError, match="has no test split") as info:
        load_split(root, "test")
    assert str(root / "test") in str(info.value)


def test_test_classes_must_equal_train_classes(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=1, classes=["a", "b"])
    write_image_folder(tmp_path / "other", n_per_class=1, classes=["a", "c"])
    (tmp_path / "other" / "train").rename(root / "test")
    with pytest.raises(CIFAR10FileError, match="must be the same") as info:
        load_split(root, "test")
    assert "['a', 'c']" in str(info.value) and "['a', 'b']" in str(info.value)
    assert "missing ['b']; extra ['c']" in str(info.value)


def test_empty_class_directory_is_an_error(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=1, classes=["a", "b"])
    (root / "train" / "c").mkdir()
    with pytest.raises(CIFAR10NotFoundError, match="No images") as info:
        load_split(root, "train")
    assert str(root / "train" / "c") in str(info.value)


def test_missing_python_batch_file_is_named(tmp_path):
    root = write_python_layout(tmp_path, n_train=10)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(CIFAR10NotFoundError, match="data_batch_3"):
        load_split(root, "train")


# ---- the cache ------------------------------------------------------------------------------


def count_decodes(monkeypatch) -> list[int]:
    """Wrap the decoder; the returned list gets the number of files of each call."""
    calls: list[int] = []
    decode = cifar10_files.decode_images

    def counting(paths):
        calls.append(len(paths))
        return decode(paths)

    monkeypatch.setattr(cifar10_files, "decode_images", counting)
    return calls


def test_cache_is_written_then_read_instead_of_decoding(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:3])
    calls = count_decodes(monkeypatch)
    first = load_split(root, "train")
    assert calls == [6]
    path = cache_path(root, "train")
    assert path == root / ".groupwise_cache" / "train.pt"
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))  # the temp file was renamed into place
    second = load_split(root, "train")
    assert calls == [6]  # read from the cache, not decoded again
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert second.classes == list(CLASSES[:3])
    payload = torch.load(path, weights_only=True)
    assert torch.equal(payload["images"], first.images)


def test_cache_off_always_decodes_and_writes_nothing(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, n_per_class=1, classes=CLASSES[:2])
    calls = count_decodes(monkeypatch)
    load_split(root, "train", cache=False)
    load_split(root, "train", cache=False)
    assert calls == [2, 2]
    assert not (root / ".groupwise_cache").exists()


def test_cache_is_rebuilt_when_a_source_image_changes(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:2])
    calls = count_decodes(monkeypatch)
    load_split(root, "train")
    changed = root / "train" / "automobile" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(changed)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # mtime differs for sure
    split = load_split(root, "train")
    assert calls == [4, 4]
    assert torch.equal(split.images[2], torch.full((3, 32, 32), 7, dtype=torch.uint8))
    load_split(root, "train")
    assert calls == [4, 4]  # the rebuilt cache is reused


def test_cache_is_rebuilt_when_an_image_is_added(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:2])
    calls = count_decodes(monkeypatch)
    load_split(root, "train")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "train" / "airplane" / "0009.png")
    assert load_split(root, "train").labels.tolist() == [0, 0, 0, 1, 1]
    assert calls == [4, 5]


def test_unreadable_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path, n_per_class=1, classes=CLASSES[:2])
    load_split(root, "train")
    cache_path(root, "train").write_bytes(b"truncated")
    calls = count_decodes(monkeypatch)
    with pytest.warns(UserWarning, match="unreadable CIFAR-10 cache"):
        split = load_split(root, "train")
    assert calls == [2] and split.labels.tolist() == [0, 1]
    assert torch.load(cache_path(root, "train"), weights_only=True)["labels"].tolist() == [0, 1]


def test_python_layout_cache_reused_and_rebuilt_on_change(tmp_path, monkeypatch):
    root = write_python_layout(tmp_path, n_train=10)
    reads: list[str] = []
    read = cifar10_files.read_python_split

    def counting(data_dir, split):
        reads.append(split)
        return read(data_dir, split)

    monkeypatch.setattr(cifar10_files, "read_python_split", counting)
    load_split(root, "train")
    load_split(root, "train")
    assert reads == ["train"]
    write_python_layout(tmp_path, n_train=15)  # rewrites the batch files
    assert len(load_split(root, "train").labels) == 15
    assert reads == ["train", "train"]


# ---- the download, served from 127.0.0.1 ---------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def local_server(tmp_path, monkeypatch):
    """Serve ``tmp_path/served`` over HTTP on 127.0.0.1 at a free port; yield (dir, url)."""
    served = tmp_path / "served"
    served.mkdir()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def serve_archive(served: Path, base_url: str, monkeypatch, md5: str | None = None) -> Path:
    archive = write_python_tarball(served / "cifar-10-python.tar.gz", n_train=20, n_test=10)
    real_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR10, "url", f"{base_url}/cifar-10-python.tar.gz")
    monkeypatch.setattr(CIFAR10, "tgz_md5", md5 or real_md5)
    return archive


def test_download_checks_md5_extracts_and_loads(local_server, tmp_path, monkeypatch):
    served, base_url = local_server
    serve_archive(served, base_url, monkeypatch)
    data_dir = tmp_path / "data"
    data_dir.mkdir()  # a data_dir that does not exist is an error, never a download
    assert ensure_data(data_dir, download=True) == "python"
    assert (data_dir / "cifar-10-python.tar.gz").is_file()
    train = load_split(data_dir, "train")
    assert train.labels.tolist() == [i % 10 for i in range(20)]
    assert train.classes == list(CLASSES)
    assert len(load_split(data_dir, "test").labels) == 10


def test_download_with_wrong_checksum_is_a_clear_error(local_server, tmp_path, monkeypatch):
    served, base_url = local_server
    serve_archive(served, base_url, monkeypatch, md5="0" * 32)
    data_dir = tmp_path / "data"
    with pytest.raises(CIFAR10DownloadError) as info:
        download_cifar10(data_dir)
    msg = str(info.value)
    assert "md5 checksum" in msg and "0" * 32 in msg and str(data_dir) in msg
    assert "python layout" in msg and "image-folder layout" in msg
    assert not (data_dir / "cifar-10-python.tar.gz").exists()  # the bad file is not kept
    assert detect_layout(data_dir) is None


def test_download_from_unreachable_server_is_a_clear_error(local_server, tmp_path, monkeypatch):
    served, base_url = local_server  # nothing served: 404
    monkeypatch.setattr(CIFAR10, "url", f"{base_url}/cifar-10-python.tar.gz")
    with pytest.raises(CIFAR10DownloadError, match="failed: HTTPError") as info:
        ensure_data(tmp_path, download=True)
    assert base_url in str(info.value) and "image-folder layout" in str(info.value)


# ---- the cache and files rewritten with their old size and mtime (issue 26, item 9) ----------


def rewrite_keeping_size_and_mtime(path: Path, content: bytes) -> None:
    """Replace ``path`` as ``rsync -a`` or a backup restore does: a new file renamed into
    place, with the old file's mtime restored."""
    st = path.stat()
    assert len(content) == st.st_size
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    tmp.replace(path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def flip_pixels(batch: Path, start: int, count: int) -> bytes:
    """The bytes of an official-format batch file with ``count`` pixel values from
    ``start`` inverted (its pickle holds them as they are, so the size stays)."""
    raw = bytearray(batch.read_bytes())
    data = pickle.loads(bytes(raw), encoding="bytes")[b"data"]
    offset = raw.index(data.tobytes())
    for i in range(offset + start, offset + start + count):
        raw[i] ^= 0xFF
    return bytes(raw)


def test_batch_rewritten_with_its_size_and_mtime_is_read_anew(tmp_path):
    root = write_python_layout(tmp_path, n_train=10, official=True)
    before = load_split(root, "train")
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    rewrite_keeping_size_and_mtime(batch, flip_pixels(batch, start=3000, count=100))
    images, labels = python_layout_arrays(root, "train")
    assert not torch.equal(before.images, torch.from_numpy(images))
    split = load_split(root, "train")
    assert torch.equal(split.images, torch.from_numpy(images))
    assert split.labels.tolist() == labels


def test_image_damaged_with_its_size_and_mtime_is_found(tmp_path):
    root = write_image_folder(tmp_path, n_per_class=2, classes=CLASSES[:2])
    load_split(root, "train")
    bad = root / "train" / "automobile" / "0001.png"
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    rewrite_keeping_size_and_mtime(bad, bytes(raw))
    with pytest.raises(CIFAR10FileError, match=f"Cannot read image {bad}"):
        load_split(root, "train")


def count_hashes(monkeypatch) -> list[str]:
    """Wrap the content hash; the returned list gets the name of each file hashed."""
    names: list[str] = []
    sha256 = cifar10_files._sha256

    def counting(path):
        names.append(Path(path).name)
        return sha256(path)

    monkeypatch.setattr(cifar10_files, "_sha256", counting)
    return names


def test_same_content_with_new_metadata_reuses_the_cache_and_hashes_once(tmp_path, monkeypatch):
    """A file copied back unchanged (or chmod-ed) keeps the cache: its content is hashed
    once, then the cache records the file's new ctime."""
    root = write_python_layout(tmp_path, n_train=10)
    first = load_split(root, "train")
    batch = root / "cifar-10-batches-py" / "data_batch_4"
    rewrite_keeping_size_and_mtime(batch, batch.read_bytes())
    calls = count_decodes(monkeypatch)
    reads: list[str] = []
    monkeypatch.setattr(cifar10_files, "read_python_split", lambda d, s: reads.append(s))
    hashed = count_hashes(monkeypatch)
    again = load_split(root, "train")
    assert reads == [] and calls == []
    assert hashed == ["data_batch_4"]
    assert torch.equal(again.images, first.images)
    load_split(root, "train")
    assert hashed == ["data_batch_4"]  # the new ctime was recorded: no hashing


@settings(max_examples=50, deadline=None)
@given(
    batch=st.sampled_from(["data_batch_1", "data_batch_5", "test_batch"]),
    start=st.integers(0, 2 * 3072 - 1),
    count=st.integers(0, 64),
)
def test_a_cached_split_is_what_its_files_hold_after_any_same_size_rewrite(batch, start, count):
    """Property: pixels inverted anywhere in a batch file (none at all: a copy of the same
    bytes), the file replaced with its old size and mtime: the next load gives what a
    load without the cache gives."""
    split = "test" if batch == "test_batch" else "train"
    with tempfile.TemporaryDirectory() as tmp:
        root = write_python_layout(Path(tmp), n_train=10, n_test=2, official=True)
        load_split(root, split)
        path = root / "cifar-10-batches-py" / batch
        count = min(count, 2 * 3072 - start)
        rewrite_keeping_size_and_mtime(path, flip_pixels(path, start, count))
        cached, fresh = load_split(root, split), load_split(root, split, cache=False)
        assert torch.equal(cached.images, fresh.images)
        assert torch.equal(cached.labels, fresh.labels)


def test_a_cache_folder_that_is_a_symlink_out_of_the_data_folder_is_not_written(tmp_path):
    """An untrusted data folder may ship ``.groupwise_cache`` as a symlink to another folder:
    the run writes no file there (a ``train.pt`` of the user's is left as it was); it decodes
    and says, once, why it caches nothing."""
    root = write_image_folder(tmp_path / "shared", n_per_class=1, classes=CLASSES[:2])
    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "train.pt").write_bytes(b"the user's own file")
    (root / ".groupwise_cache").symlink_to(elsewhere, target_is_directory=True)
    with pytest.warns(UserWarning, match=r"\.groupwise_cache is a symlink"):
        split = load_split(root, "train")
    assert split.images.shape[0] == 2
    assert sorted(p.name for p in elsewhere.iterdir()) == ["train.pt"]
    assert (elsewhere / "train.pt").read_bytes() == b"the user's own file"

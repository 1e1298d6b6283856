"""Shared fixtures: the real CIFAR-10 JPEGs for the tests marked `slow`."""

from pathlib import Path

import pytest
from torchvision.datasets.utils import extract_archive

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"


@pytest.fixture(scope="session")
def real_cifar10_dir() -> Path:
    """``<repo>/data/cifar10-jpeg`` extracted from the shared archive, once per archive
    (a stamp file records which archive, size and mtime it came from)."""
    if not ARCHIVE.is_file():
        pytest.skip(f"real CIFAR-10 archive not found at {ARCHIVE}")
    root = REPO / "data" / "cifar10-jpeg"
    stamp = root / ".extracted-from"
    st = ARCHIVE.stat()
    key = f"{ARCHIVE} {st.st_size} {st.st_mtime_ns}"
    if not (stamp.is_file() and stamp.read_text() == key):
        extract_archive(str(ARCHIVE), str(REPO / "data"))
        stamp.write_text(key)
    return root

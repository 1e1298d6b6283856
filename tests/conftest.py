"""Shared fixtures: a tiny fabricated CIFAR-10, and the real JPEGs for tests marked `slow`."""

import os
from pathlib import Path

import pytest
from fake_cifar import write_image_folder
from hypothesis import settings
from torchvision.datasets.utils import extract_archive

REPO = Path(__file__).resolve().parents[1]

# Property tests: locally each run draws new cases (and replays the ones that failed before,
# from .hypothesis/); under CI the cases are derived from each test's name, so a run is
# reproducible and a landing is never decided by a fresh draw. Each test's max_examples is
# its own (kept small in the quick suite, larger in its `slow` variant).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    settings.load_profile("ci")
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """80 training images (8 per class) and 20 test images, image-folder layout (PNG)."""
    return write_image_folder(tmp_path_factory.mktemp("cifar"), n_per_class=8, with_test=True)


@pytest.fixture(scope="session")
def real_cifar10_dir() -> Path:
    """``<repo>/data/cifar10-jpeg`` extracted from the shared archive, once per archive
    (a stamp file records which archive, size and mtime it came from).

    Without the archive the tests using it are skipped, except under CI (``CI=true``, as CI
    services set it), where they fail: a CI run must not pass without having run them."""
    if not ARCHIVE.is_file():
        missing = f"real CIFAR-10 archive not found at {ARCHIVE}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing} (CI=true: the real-data tests must run)", pytrace=False)
        pytest.skip(missing)
    root = REPO / "data" / "cifar10-jpeg"
    stamp = root / ".extracted-from"
    st = ARCHIVE.stat()
    key = f"{ARCHIVE} {st.st_size} {st.st_mtime_ns}"
    if not (stamp.is_file() and stamp.read_text() == key):
        extract_archive(str(ARCHIVE), str(REPO / "data"))
        stamp.write_text(key)
    return root

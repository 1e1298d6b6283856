"""The real-data fixture: a missing archive skips the real-data tests locally and fails
the run under CI (``CI=true``), so CI can never pass without having run them."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
USES_REAL_DATA = "def test_reads_the_real_data(real_cifar10_dir):\n    assert real_cifar10_dir\n"


@pytest.mark.parametrize(
    ("ci", "returncode", "outcome"), [("", 0, "1 skipped"), ("true", 1, "1 error")]
)
def test_a_missing_real_cifar10_archive_fails_the_run_only_under_ci(
    tmp_path, ci, returncode, outcome
):
    # A copy of the test set-up in a tree with no ../shared/data beside the repository.
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    for name in ("conftest.py", "fake_cifar.py"):
        shutil.copy(TESTS / name, tests / name)
    (tests / "test_real.py").write_text(USES_REAL_DATA)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rsE", str(tests)],
        capture_output=True, text=True, cwd=tests, env=env,
    )  # fmt: skip
    assert done.returncode == returncode, done.stdout[-2000:]
    assert outcome in done.stdout
    missing = tmp_path / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
    assert f"real CIFAR-10 archive not found at {missing}" in done.stdout

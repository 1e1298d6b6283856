"""A checkpoint save that fails (no space left, permission denied) stops the run with a
message naming the file and the error, and leaves the previous ``last.ckpt`` as it was, to
resume from.

The failure is injected where the bytes are written (``fault_injection.FailSave``): when
the temporary file beside ``last.ckpt`` is opened, or after its first 1000 bytes.
"""

import errno
import json
import os

import pytest
from cli_run import LENET, load, quick
from file_snapshot import snapshot
from test_resume import assert_same_state

from groupwise.cli import run

LAST = "lightning_logs/version_0/checkpoints/last.ckpt"
TWO_EPOCHS = ["--trainer.max_epochs", "2", "--trainer.deterministic", "true"]


def fail_save(**init_args) -> str:
    spec = {"class_path": "fault_injection.FailSave", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def fail_in_epoch_1(data_dir, root, code: int, at: str) -> OSError:
    """A two-epoch run whose save of last.ckpt at the end of epoch 1 fails; the error."""
    args = quick(data_dir, root, *TWO_EPOCHS, fail_save(epoch=1, errno=code, at=at))
    with pytest.raises(OSError) as failed:
        run(["fit", "--config", LENET, *args])
    return failed.value


@pytest.mark.parametrize("code, at", [(errno.ENOSPC, "write"), (errno.EACCES, "open")])
def test_failed_save_stops_the_run_naming_file_and_error_and_keeps_the_previous_last(
    data_dir, tmp_path, code, at
):
    error = fail_in_epoch_1(data_dir, tmp_path, code, at)
    last = tmp_path / LAST
    assert error.errno == code
    assert str(last) in str(error) and os.strerror(code) in str(error), str(error)
    assert "the previous last.ckpt is unchanged" in str(error)
    assert load(last)["epoch"] == 0 and load(last)["global_step"] == 3  # epoch 0's
    # no temporary file left; the best checkpoint is still epoch 0's
    best, newest = sorted(p.name for p in last.parent.iterdir())
    assert best.startswith("epoch000-") and newest == "last.ckpt"


@pytest.mark.slow
def test_the_last_ckpt_kept_by_a_failed_save_resumes_to_the_uninterrupted_result(
    data_dir, tmp_path, tmp_path_factory
):
    uninterrupted = tmp_path_factory.mktemp("uninterrupted")
    run(["fit", "--config", LENET, *quick(data_dir, uninterrupted, *TWO_EPOCHS)])
    fail_in_epoch_1(data_dir, tmp_path, errno.ENOSPC, "write")
    before = snapshot(tmp_path / "lightning_logs/version_0")
    run(["fit", "--config", LENET, *quick(data_dir, tmp_path, *TWO_EPOCHS), "--ckpt_path", "last"])
    assert snapshot(tmp_path / "lightning_logs/version_0") == before  # read, not written
    resumed = load(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt")
    assert_same_state(resumed, load(uninterrupted / LAST))

"""AtomicCheckpointIO: what a save leaves beside the checkpoint."""

import subprocess
import sys

import torch

from groupwise.checkpoint.io import AtomicCheckpointIO, load_checkpoint_file


def dead_pid() -> int:
    """The id of a process that has exited (as a SIGKILLed save's process has)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    return int(done.stdout)


def test_a_save_removes_the_stale_temporaries_of_that_file_only(tmp_path):
    """A kill during a save leaves ``.last.ckpt.tmp-<pid>``; the next successful save of
    ``last.ckpt`` removes it. A temporary of a live process (a save in progress) and the
    temporaries of other files stay."""
    stale = tmp_path / f".last.ckpt.tmp-{dead_pid()}"
    stale.write_bytes(b"half a checkpoint")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        in_progress = tmp_path / f".last.ckpt.tmp-{live.pid}"
        in_progress.write_bytes(b"being written")
        other_file = tmp_path / f".epoch001.ckpt.tmp-{dead_pid()}"
        other_file.write_bytes(b"another checkpoint's")
        not_ours = tmp_path / ".last.ckpt.tmp-notapid"
        not_ours.write_bytes(b"someone else's")

        AtomicCheckpointIO().save_checkpoint(
            {"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.ckpt"
        )

        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["last.ckpt", in_progress.name, other_file.name, not_ours.name]
        )
        assert torch.equal(
            load_checkpoint_file(tmp_path / "last.ckpt")["state_dict"]["w"], torch.ones(2)
        )
    finally:
        live.kill()
        live.wait()

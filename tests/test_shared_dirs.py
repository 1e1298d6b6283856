"""Runs that share a directory: two `groupwise fit` processes started together on one cold
data directory, and several runs under one `lightning_logs/` resumed with `--ckpt_path last`.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_run import GROUPWISE, LENET, load, quick, subprocess_env
from fake_cifar import write_image_folder

from groupwise.data.cifar10_files import cache_path, load_split

pytestmark = pytest.mark.slow

DETERMINISTIC = ["--trainer.max_epochs", "1", "--trainer.deterministic", "true"]


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [GROUPWISE, *args],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def pause_cache_write(until: Path) -> str:
    spec = {"class_path": "fault_injection.PauseCacheWrite", "init_args": {"until": str(until)}}
    return f"--trainer.callbacks+={json.dumps(spec)}"


@pytest.mark.parametrize("overlap", ["same moment", "while the other writes"])
def test_two_runs_building_the_cache_at_once_both_train_on_the_complete_data(tmp_path, overlap):
    """Both processes decode the cold directory and write the cache. "while the other
    writes": the first pauses with half of its cache file written while the second runs
    from start to end; the second must not read that half file, nor may it break the
    first's write."""
    data = write_image_folder(tmp_path / "data", n_per_class=8)
    cache_dir = cache_path(data, "train").parent
    runs = [quick(data, tmp_path / name, *DETERMINISTIC) for name in ("a", "b")]
    if overlap == "same moment":
        first = start("fit", "--config", LENET, *runs[0])
        second = start("fit", "--config", LENET, *runs[1])
        done = [finish(first), finish(second)]
    else:
        go = tmp_path / "go"
        first = start("fit", "--config", LENET, *runs[0], pause_cache_write(go))
        deadline = time.monotonic() + 300
        while not (cache_dir.is_dir() and any(p.stat().st_size for p in cache_dir.iterdir())):
            assert first.poll() is None and time.monotonic() < deadline, "no cache write began"
            time.sleep(0.05)
        second = finish(start("fit", "--config", LENET, *runs[1]))
        go.touch()
        done = [finish(first), second]
    for run in done:
        assert run.returncode == 0, run.stderr[-3000:]
        assert "cache" not in run.stderr.lower(), run.stderr[-3000:]  # no unreadable-cache warning
    # The same images, labels and order: seeded deterministic runs end bit-identical.
    a, b = (load(tmp_path / n / "lightning_logs/version_0/checkpoints/last.ckpt") for n in "ab")
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    # The cache that stays is complete and matches a fresh decode; no temporary file is left.
    assert sorted(p.name for p in cache_dir.iterdir()) == ["train.pt"]
    cached, decoded = load_split(data, "train"), load_split(data, "train", cache=False)
    assert torch.equal(cached.images, decoded.images)
    assert torch.equal(cached.labels, decoded.labels)

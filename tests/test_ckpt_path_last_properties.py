"""What `--ckpt_path last` picks (``groupwise.checkpoint.last.pick_last``), as a property over
generated directories of last.ckpt files: runs of this config, of this config file with
another setting, of another config file with another setting, whole files of another tool
(refused by the safe loader) and files cut short, written in any order. The pick is the
newest run of this config; every newer file is passed over by name, none raises; with no
run of this config, ``changed`` is the newest run of this config file and ``damaged``
every cut file.
"""

import argparse
import io
import os
import tempfile
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groupwise.checkpoint.last import RunConfig, pick_last

FILES = ["/configs/lenet.yaml"]
CURRENT = RunConfig({"lr": 0.005}, {"batch_size": 20}, 0)
KINDS = ["this config", "another lr", "another file", "another tool", "cut short"]


def checkpoint_bytes(kind: str) -> bytes:
    lr = {"another lr": 0.01, "another file": 0.02}.get(kind, 0.005)
    checkpoint = {
        "state_dict": {"w": torch.zeros(2)},
        "hyper_parameters": {"lr": lr},
        "datamodule_hyper_parameters": {"batch_size": 20},
        "DM": {"seed": 0},
        "config_files": ["/configs/other.yaml"] if kind == "another file" else FILES,
    }
    if kind == "another tool":
        checkpoint["hyper_parameters"]["args"] = argparse.Namespace(lr=lr)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    return data[: len(data) // 2] if kind == "cut short" else data


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.sampled_from(KINDS), max_size=6))
def test_the_newest_run_of_this_config_is_picked_and_every_newer_file_named(kinds):
    """``kinds``: the runs' files, newest first."""
    with tempfile.TemporaryDirectory() as directory:
        paths = []
        for age, kind in enumerate(kinds):
            path = Path(directory) / f"version_{age}" / "last.ckpt"
            path.parent.mkdir()
            path.write_bytes(checkpoint_bytes(kind))
            os.utime(path, ns=(10**18 - age * 10**9,) * 2)
            paths.append(path)
        pick = pick_last(reversed(paths), CURRENT, "DM", FILES)

    first = kinds.index("this config") if "this config" in kinds else len(kinds)
    assert pick.path == (paths[first] if first < len(kinds) else None)
    assert [path for path, _ in pick.passed_over] == paths[:first]
    for (_, why), kind in zip(pick.passed_over, kinds, strict=False):
        readable = kind not in ("another tool", "cut short")
        assert why.startswith("another config (" if readable else "not readable (")
    if pick.path is not None:
        return
    same_file = [path for path, kind in zip(paths, kinds, strict=True) if kind == "another lr"]
    assert pick.changed == ((same_file[0], [("model.lr", 0.01, 0.005)]) if same_file else None)
    cut = [path for path, kind in zip(paths, kinds, strict=True) if kind == "cut short"]
    assert [path for path, _ in pick.damaged] == cut

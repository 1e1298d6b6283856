"""scripts/bench_gpu.py --dry-run: the GPU benchmark's code paths (autocast, channels_last,
torch.compile, a warm-up run, the timer, the table and record) on the CPU, so that the script
works the first time a GPU is there."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load(name: str):
    """A script of ``scripts/`` as a module (``scripts/`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_gpu = load("bench_gpu")


@pytest.mark.slow  # ~35 s: bfloat16 autocast is emulated on a CPU without bfloat16 instructions
def test_dry_run_warms_up_then_times_one_run_and_writes_the_record(tmp_path, capsys):
    out = tmp_path / "bench_gpu.json"
    record = bench_gpu.main(["--dry-run", "--out", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["dry_run"] is True and record["autocast"] == "bfloat16"
    assert record["recipe"] is None  # not timed in a dry run
    warmup, run = record["port"]
    assert warmup["warmup_seconds"] > 0
    # 8 images in one batch of 8 an epoch, 4 epochs: the whitening bias for the first 3
    assert run["seed"] == 0
    assert (run["steps"], run["total_train_steps"], run["whiten_bias_train_steps"]) == (4, 4, 3)
    assert len(run["epoch_seconds"]) == 4 and len(run["val_acc_per_epoch"]) == 4
    assert 0 <= run["tta_acc"] <= 1 and (run["tta_acc"] * 8).is_integer()  # k of 8 images

    printed = capsys.readouterr().out
    assert "|  warmup  |      0  |" in printed
    assert f"port           0    {run['tta_acc']:.4f}  {run['time_seconds']:9.3f}" in printed
    assert f"record: {out}" in printed


def test_the_recipe_is_skipped_with_a_line_while_its_config_is_missing(tmp_path, capsys):
    missing = tmp_path / "airbench94.yaml"
    assert bench_gpu.time_recipe(config=missing) is None
    assert capsys.readouterr().out == f"groupwise recipe: {missing} is not here yet; not timed\n"

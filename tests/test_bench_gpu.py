"""scripts/bench_gpu.py --dry-run: the GPU benchmark's code paths (autocast, channels_last,
torch.compile, the warm-ups, both sides' timers, the time budget, the host-sync row, the
table and record) on the CPU, so that the script works the first time a GPU is there."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from script_module import SCRIPTS, script_module

AIRBENCH = SCRIPTS.parent / "configs" / "airbench94.yaml"

bench_gpu = script_module("bench_gpu")  # puts scripts/ on sys.path: benchmarks.* import
from benchmarks import cuda_host_sync, gpu_recipe  # noqa: E402
from benchmarks.harness import format_table  # noqa: E402


@pytest.mark.slow  # ~35 s: two warm-ups and a pair of runs, Lightning's start included
def test_dry_run_times_the_port_and_the_recipe_and_prints_one_table(tmp_path, capsys):
    out = tmp_path / "bench_gpu.json"
    # two pairs asked for, a budget of 0 s: the first pair always runs, the second not
    record = bench_gpu.main(["--dry-run", "--runs", "2", "--budget-s", "0", "--out", str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["dry_run"] is True and record["autocast"] == "bfloat16"
    # 8 images in one batch of 8 an epoch, 4 epochs: the whitening bias for the first 3
    (port,) = record["port"]
    assert port["seed"] == 0
    assert (port["steps"], port["total_train_steps"], port["whiten_bias_train_steps"]) == (4, 4, 3)
    assert len(port["epoch_seconds"]) == 4 and len(port["val_acc_per_epoch"]) == 4
    assert 0 <= port["tta_acc"] <= 1 and (port["tta_acc"] * 8).is_integer()  # k of 8 images
    assert port["graphs_compiled"] == 0  # the warm-up run compiled them

    (recipe,) = record["recipe"]
    assert (recipe["seed"], recipe["steps"], recipe["precision"]) == (0, 4, "bf16-mixed")
    assert len(recipe["epoch_seconds"]) == 4
    assert recipe["whitened_images"] == [8]  # the config's WhiteningInit ran, on all 8
    assert len(recipe["validation_seconds"]) == 1  # once, after the last epoch (TTA)
    assert recipe["metrics"]["val/acc"] == recipe["tta_acc"]
    assert (recipe["tta_acc"] * 8).is_integer()  # the same 8 held-out images
    assert recipe["time_seconds"] == pytest.approx(
        recipe["whiten_seconds"] + recipe["first_step_to_end_seconds"]
    )
    assert recipe["whiten_seconds"] > 0 and recipe["time_seconds"] < recipe["wall_seconds"]
    # the warm-up fit traced the net; the timed fit's new LightningModule reused its graphs
    assert record["warmups"]["groupwise"]["graphs_compiled"] > 0
    assert recipe["graphs_compiled"] == 0
    assert record["time_ratios"] == [recipe["time_seconds"] / port["time_seconds"]]
    assert record["host_sync"]["outcome"] == "skipped" and record["host_sync"]["returncode"] is None

    header, rows = record["table"]["header"], record["table"]["rows"]
    assert rows[0] == ["port", 0, f"{port['tta_acc']:.4f}", f"{port['time_seconds']:.3f}", ""]
    assert rows[1][:4] == [
        "groupwise",
        0,
        f"{recipe['tta_acc']:.4f}",
        f"{recipe['time_seconds']:.3f}",
    ]
    assert rows[-2] == ["CUDA host-sync", "", "", "", "skipped (no GPU)"]
    assert rows[-1][-1].startswith("1 of 2 (the next would pass --budget-s 0); ")
    printed = capsys.readouterr().out
    assert format_table(header, rows) in printed
    assert "|  warmup  |      0  |" in printed  # the port's own per-epoch table
    assert f"record: {out}" in printed


def test_zero_runs_is_one_clear_error(tmp_path):
    from groupwise.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"^--runs must be at least 1 \(one pair of runs\), got 0$"
    ):
        bench_gpu.main(["--dry-run", "--runs", "0", "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_the_table_has_each_run_the_means_the_ratio_and_the_host_sync_row():
    def run(seed, acc, seconds, **extra):
        return {"seed": seed, "tta_acc": acc, "time_seconds": seconds, **extra}

    record = {
        "port": [run(0, 0.94, 2.0), run(1, 0.9402, 3.0)],
        "recipe": [run(0, 0.9398, 2.2, wall_seconds=9.04), run(1, 0.9406, 3.6, wall_seconds=9.0)],
        "time_ratios": [1.1, 1.2],
        "warmup_seconds": {"port": 95.04, "groupwise": 60.0},
        "host_sync": {"outcome": "passed", "message": ""},
        "pairs_note": "2 of 2; 300 s in all",
    }
    header, rows = bench_gpu.table_rows(record)
    assert header == ["", "seed", "tta_acc", "seconds", "note"]
    assert rows == [
        ["port", 0, "0.9400", "2.000", ""],
        ["groupwise", 0, "0.9398", "2.200", "fit 9.0 s wall"],
        ["port", 1, "0.9402", "3.000", ""],
        ["groupwise", 1, "0.9406", "3.600", "fit 9.0 s wall"],
        ["port", "mean", "0.9401", "2.500", "median 2.500 s"],
        ["groupwise", "mean", "0.9402", "2.900", "median 2.900 s"],
        ["groupwise / port", "", "", "1.150x",
         "time, median of 2 per-seed ratios (1.150 (1.100-1.200))"],
        ["groupwise - port", "", "+0.0001", "", "mean tta_acc"],
        ["warm-up", "", "", "", "port 95.0 s, groupwise fit 60.0 s (compiling; not timed)"],
        ["CUDA host-sync", "", "", "", "passed"],
        ["pairs run", "", "", "", "2 of 2; 300 s in all"],
    ]  # fmt: skip


def test_the_timed_callbacks_wrap_the_shipped_whitening_init():
    shipped = yaml.safe_load(AIRBENCH.read_text())["trainer"]["callbacks"]
    (whitening,) = shipped
    assert gpu_recipe.timed_callbacks(AIRBENCH) == [
        {"class_path": "benchmarks.gpu_recipe.RecipeTimer"},
        whitening,
        {"class_path": "benchmarks.gpu_recipe.WhiteningDone"},
    ]
    dry = gpu_recipe.timed_callbacks(AIRBENCH, whitening_images=8, eager_compile=True)
    assert dry[1]["init_args"] == {**whitening["init_args"], "images": 8}
    assert dry[-1] == {"class_path": "benchmarks.gpu_recipe.EagerCompile"}


def test_a_gpu_fit_runs_the_shipped_recipe_compiled_on_the_gpu():
    args = gpu_recipe.fit_args(
        3, data_dir="data/cifar10-jpeg", root="runs", precision="bf16-mixed",
        accelerator="gpu", epochs=8, val_size=10_000, split_seed=0, compile=True,
    )  # fmt: skip
    assert args[:3] == ["fit", "--config", str(AIRBENCH)]
    for option in [
        "--seed_everything=3", "--data.val_size=10000", "--data.seed=0",
        "--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.precision=bf16-mixed",
        "--trainer.max_epochs=8", "--trainer.check_val_every_n_epoch=8",
        "--model.channels_last=true", "--model.compile=true",
    ]:  # fmt: skip
        assert option in args
    # the config's batch size and net; its WhiteningInit on its 5,000 images; no eager compile
    assert not [a for a in args if a.startswith(("--data.batch_size", "--model.net"))]
    (callbacks,) = [a for a in args if a.startswith("--trainer.callbacks=")]
    assert json.loads(callbacks.partition("=")[2]) == gpu_recipe.timed_callbacks(AIRBENCH)


def test_the_host_sync_row_reads_pytests_outcome(tmp_path):
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite><testcase name="t"><failure message="RuntimeError: called a'
        ' synchronizing CUDA operation&#10;more">trace</failure></testcase></testsuite>'
        "</testsuites>"
    )
    outcome, message = cuda_host_sync.outcome_of(report)
    assert outcome == "failed"
    row = cuda_host_sync.row_text({"outcome": outcome, "message": message})
    assert row == "FAILED: RuntimeError: called a synchronizing CUDA operation"
    report.write_text("<testsuites><testsuite><testcase name='t'/></testsuite></testsuites>")
    assert cuda_host_sync.outcome_of(report) == ("passed", "")


def test_the_host_sync_row_names_a_cuda_test_that_exists():
    path, name = cuda_host_sync.TEST.split("::")
    source = (SCRIPTS.parent / path).read_text()
    assert f"def {name}(" in source and "set_sync_debug_mode" in source


@pytest.mark.slow  # ~8-10 s: pytest's start in the child
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the child runs the test")
def test_the_host_sync_test_runs_in_a_child_pytest_and_skips_without_cuda():
    """The path a GPU run takes, on the CPU: the child pytest runs the test, which skips
    itself without CUDA."""
    result = cuda_host_sync.run_test(skip_without_cuda=False)
    assert (result["outcome"], result["returncode"]) == ("skipped", 0), result["output_tail"]
    assert "needs CUDA" in result["message"]
    assert cuda_host_sync.row_text(result) == "skipped (no GPU)"

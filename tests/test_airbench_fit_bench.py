"""``bench.py airbench_fit``, the groupwise side of the CPU side by side with the port
(``scripts/airbench_pair.sh``), on a fabricated image folder: the shipped config as a user
runs it, validation once after the last epoch, the timer's seconds and the record."""

from __future__ import annotations

import json

import pytest
from fake_cifar import write_image_folder
from test_benchmarks import bench, run_main  # noqa: F401  (bench: a fixture)


@pytest.mark.slow  # ~15 s: the full-width airbench net, Lightning's start included
def test_one_epoch_on_fabricated_data_writes_the_timed_record(bench, tmp_path, monkeypatch):  # noqa: F811
    from benchmarks import harness

    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    folder = write_image_folder(tmp_path / "cifar", n_per_class=8)  # 80 images
    argv = ["airbench_fit", "--data-dir", str(folder), "--val-size", "20", "--seed", "3"]
    argv += ["--epochs", "2", "--batch-size", "20", "--whitening-images", "40"]
    argv += ["--root-dir", str(tmp_path / "runs")]
    code, out = run_main(bench, argv)
    assert code == 0

    (path,) = (tmp_path / "results").glob("airbench_fit-*.json")
    record = json.loads(path.read_text())
    result = record["results"]["groupwise"]
    # 60 training images in batches of 20: 3 steps an epoch, 2 epochs
    assert (result["seed"], result["steps"], result["precision"]) == (3, 6, "32-true")
    assert result["whitened_images"] == [40]
    assert len(result["epoch_seconds"]) == 2
    assert len(result["validation_seconds"]) == 1  # once, after the last epoch (TTA)
    assert result["tta_acc"] == result["metrics"]["val/acc"]
    assert (result["tta_acc"] * 20) == pytest.approx(round(result["tta_acc"] * 20))  # k of 20
    assert result["time_seconds"] == pytest.approx(
        result["whiten_seconds"] + result["first_step_to_end_seconds"]
    )
    assert result["time_seconds"] < result["wall_seconds"]
    assert record["tables"][0]["rows"][0][:2] == [3, f"{100 * result['tta_acc']:.2f}%"]
    assert f"record: {path}" in out

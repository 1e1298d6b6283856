"""DDP on CPU (gloo, 2 processes) against one process, with the same global batch and seed.

60 training images, 20 validation images; one process takes batches of 20, each of the
two DDP ranks batches of 10, so every optimizer step averages the same 20 images.
"""

import json
from pathlib import Path

import pytest
import torch
from cli_run import LENET, groupwise, load, quick, scalars
from fake_cifar import write_image_folder

pytestmark = pytest.mark.slow

EPOCHS = ["--trainer.max_epochs", "3", "--model.scheduler.init_args.milestones", "[1, 2]"]


def record(out: Path) -> str:
    spec = {"class_path": "fault_injection.RecordRank", "init_args": {"out": str(out)}}
    return f"--trainer.callbacks+={json.dumps(spec)}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    data_dir = write_image_folder(tmp_path_factory.mktemp("cifar"), n_per_class=8)
    results = {}
    for name, extra in {
        "single": ["--data.batch_size", "20"],
        "ddp": ["--data.batch_size", "10", "--trainer.strategy", "ddp", "--trainer.devices", "2"],
    }.items():
        root = tmp_path_factory.mktemp(name)
        args = quick(data_dir, root, *EPOCHS, *extra, record(root / "ranks"))
        done = groupwise("fit", "--config", LENET, *args)
        assert done.returncode == 0, done.stderr[-4000:]
        ranks = sorted((root / "ranks").glob("rank*.pt"))
        results[name] = {
            "ranks": [load(path) for path in ranks],
            "scalars": scalars(root / "lightning_logs/version_0"),
            "last": load(root / "lightning_logs/version_0/checkpoints/last.ckpt"),
        }
    return results


def test_each_rank_sees_a_disjoint_half_of_the_training_data_each_epoch(runs):
    rank0, rank1 = runs["ddp"]["ranks"]
    (single,) = runs["single"]["ranks"]
    for epoch in range(3):
        seen0, seen1 = rank0["seen"][epoch], rank1["seen"][epoch]
        assert len(seen0) == len(seen1) == 30
        assert not set(seen0) & set(seen1)
        assert set(seen0) | set(seen1) == set(range(60))
        # Together the ranks walk the one-process order: step k averages the same images.
        order = single["seen"][epoch]
        for step in range(3):
            part = slice(10 * step, 10 * step + 10)
            assert set(seen0[part] + seen1[part]) == set(order[20 * step : 20 * step + 20])


def test_weights_are_identical_across_ranks(runs):
    rank0, rank1 = runs["ddp"]["ranks"]
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key


def test_logged_metrics_are_synchronised_across_ranks(runs):
    rank0, rank1 = runs["ddp"]["ranks"]
    for name in ("val/acc", "val/loss", "train/acc"):
        assert rank0["metrics"][name] == rank1["metrics"][name], name
    # 20 validation images: the synchronised accuracy is a whole number of them.
    right = rank0["metrics"]["val/acc"] * 20
    assert right == pytest.approx(round(right))


def test_two_processes_match_one_process(runs):
    """Same global batch, seed and augmentation: the same training up to float summation
    order. Stated tolerance: weights within 1e-5, validation accuracy within one image."""
    single, ddp = runs["single"], runs["ddp"]
    for tag in ("lr-SGD/features", "lr-SGD/classifier", "lr-SGD/features-momentum"):
        assert ddp["scalars"][tag] == single["scalars"][tag], tag
    for key, value in single["last"]["state_dict"].items():
        torch.testing.assert_close(ddp["last"]["state_dict"][key], value, atol=1e-5, rtol=1e-4)
    accuracy = [run["ranks"][0]["metrics"]["val/acc"] for run in (single, ddp)]
    assert abs(accuracy[0] - accuracy[1]) <= 1 / 20

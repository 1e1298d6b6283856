"""configs/airbench94.yaml end to end on the fabricated data (a narrow AirbenchNet, batches
of 20: 3 steps an epoch, 2 epochs): the groups carry airbench94_muon.py's numbers, every
group but the whitening bias follows its lr line L403, ``lr x (1 - step / total_steps)``,
step by step in TensorBoard, the whitening bias its own 3-epoch schedule, and the
checkpoint records the recipe's options."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from airbench_recipe import AIRBENCH, TINY, recipe_config
from cli_run import load, quick, scalars
from host_reads import HostReads
from test_host_sync import STEPS as HOST_SYNC_STEPS
from test_host_sync import fit_args, writes_or_shows

from groupwise.cli import run

STEPS = 2 * 3  # 2 epochs of ceil(60 / 20) steps
BATCH = 2000  # airbench94_muon.py L342


@pytest.fixture(scope="module")
def recipe(data_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("airbench")
    config = recipe_config(root / "airbench.yaml")
    fit = run(
        ["fit", "--config", str(config), *quick(data_dir, root, *TINY, "--trainer.max_epochs", "2")]
    )
    run_dir = root / "lightning_logs" / "version_0"
    return {
        "fit": fit,
        "scalars": scalars(run_dir),
        "last": load(run_dir / "checkpoints/last.ckpt"),
    }


def test_the_groups_carry_airbenchs_numbers(recipe):
    groups = {g["name"]: g for g in recipe["fit"].trainer.optimizers[0].param_groups}
    assert list(groups) == ["whiten_bias", "norm_biases", "head", "filters"]
    for name, lr in [("whiten_bias", 0.053), ("norm_biases", 0.053), ("head", 0.67)]:
        group = groups[name]
        assert group["initial_lr"] == lr
        # L345, L358-L360: weight decay 2e-6 x batch size over the group's lr
        assert group["weight_decay"] == 2e-6 * BATCH / lr
        assert (group["momentum"], group["nesterov"]) == (0.85, True)
    filters = groups["filters"]
    assert filters["initial_lr"] == 0.24
    assert (filters["momentum"], filters["nesterov"], filters["ns_steps"]) == (0.6, True, 3)
    assert (filters["weight_decay"], filters["adjust_lr_fn"]) == (0.0, None)
    assert filters["normalize_weights"] is True
    assert [len(groups[n]["params"]) for n in groups] == [1, 6, 1, 6]


def test_the_lrs_fall_linearly_to_0_over_the_run_as_airbenchs_line_403(recipe):
    """L403: before step s, lr = initial_lr x (1 - s / total_train_steps)."""
    logged = recipe["scalars"]
    for tag, peak in [
        ("lr-SGD/norm_biases", 0.053),
        ("lr-SGD/head", 0.67),
        ("lr-Muon/filters", 0.24),
    ]:
        steps = [step for step, _ in logged[tag]]
        assert steps == list(range(STEPS)), tag
        for step, value in logged[tag]:
            assert value == pytest.approx(peak * (1 - step / STEPS), rel=1e-6, abs=1e-9), (
                tag,
                step,
            )
    assert recipe["last"]["global_step"] == STEPS


def test_the_checkpoint_records_the_recipes_options(recipe):
    last = recipe["last"]
    model = last["hyper_parameters"]
    assert (model["tta"], model["loss_reduction"], model["label_smoothing"]) == (
        "mirror_translate",
        "sum",
        0.2,
    )
    assert model["net"]["class_path"] == "groupwise.nets.AirbenchNet"
    data = last["datamodule_hyper_parameters"]
    assert (data["crop_padding"], data["padding_mode"], data["flip"]) == (2, "reflect", "alternate")
    assert recipe["fit"].model.tta == "mirror_translate"


def test_the_shipped_file_has_the_benchmarks_numbers():
    config = yaml.safe_load(AIRBENCH.read_text())
    assert config["data"]["batch_size"] == BATCH and config["data"]["val_size"] == 0
    assert config["trainer"]["max_epochs"] == 8
    (whiten_bias,) = [r for r in config["model"]["param_groups"] if r["name"] == "whiten_bias"]
    assert whiten_bias["schedule"] == {
        "shape": "linear",
        "epochs": 3,
        "end_factor": 0.0,
        "freeze_at_end": True,
    }


@pytest.mark.slow  # ~50 s on 2 cores (30 steps watched op by op); CI runs it
def test_ordinary_training_steps_of_the_recipe_make_no_host_read(data_dir, tmp_path):
    """tests/test_host_sync.py's check on this recipe: Muon, the summed loss, the reflect
    crop and the alternating flip read nothing on the host and make no tensor from Python
    data in an ordinary step (15 steps of 4 images an epoch, 2 epochs)."""
    windows = json.dumps({"class_path": "host_reads.StepWindows"})
    config = recipe_config(tmp_path / "airbench.yaml")
    with HostReads() as seen:
        cli = run(
            ["fit", "--config", str(config)]
            + fit_args(data_dir, tmp_path, *TINY, f"--trainer.callbacks+={windows}")
        )
    assert cli.trainer.global_step == HOST_SYNC_STEPS
    redraws = {w[1] for w in seen.redraws if w[0] == "step"}
    allowed = {s for s in range(HOST_SYNC_STEPS) if writes_or_shows(s)} | redraws
    ordinary = set(range(HOST_SYNC_STEPS)) - allowed
    assert len(ordinary) >= 10, sorted(ordinary)
    reads, made = seen.steps_with(seen.reads), seen.steps_with(seen.made)
    where = json.dumps(seen.where, indent=1)
    assert {s: n for s, n in reads.items() if s in ordinary} == {}, where
    assert {s: n for s, n in made.items() if s in ordinary} == {}, where
    assert seen.steps_with(seen.reads, "augment") == {}, where
    assert seen.steps_with(seen.made, "augment") == {}, where
    assert {9, 19, 29} <= set(reads), where  # it sees the reads that are due


def test_the_whitening_bias_follows_its_own_3_epoch_schedule_then_stays(data_dir, tmp_path):
    """The shipped rule's ``schedule`` (L353, L398, L401): before step s < 9 (3 epochs of 3
    steps) the whitening bias's lr is 0.053 x (1 - s / 9), and from step 9 on it changes no
    more (the script cuts its gradient off)."""
    config = recipe_config(tmp_path / "airbench.yaml")
    bias = json.dumps({"class_path": "airbench_recipe.RecordWhitenBias"})
    args = quick(data_dir, tmp_path, *TINY, "--trainer.max_epochs", "4")
    fit = run(["fit", "--config", str(config), *args, f"--trainer.callbacks+={bias}"])
    logged = scalars(tmp_path / "lightning_logs" / "version_0")["lr-SGD/whiten_bias"]
    for step, value in logged:
        if step < 9:
            assert value == pytest.approx(0.053 * (1 - step / 9), rel=1e-6), step
    (record,) = [c for c in fit.trainer.callbacks if type(c).__name__ == "RecordWhitenBias"]
    biases = record.biases
    assert sorted(biases) == list(range(-1, 12))
    assert all(not torch.equal(biases[s], biases[s - 1]) for s in range(9)), "it trains"
    assert all(torch.equal(biases[s], biases[8]) for s in range(9, 12)), "then it stays"

"""configs/fast.yaml end to end on the fake data: what the checkpoint records, the schedule's
length under one process and under DDP (2 gloo CPU ranks), and bf16 mixed precision on CPU.

60 training images (80 less 20 held out for validation) in batches of 8 per device: one
process takes ceil(60 / 8) = 8 steps an epoch, each of two DDP ranks ceil(30 / 8) = 4.
A narrow FastNet (widths 8, 16, 16) keeps it quick; the rest of the recipe is as shipped.
"""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from cli_run import ROOT, groupwise, load, quick, scalars

from groupwise.cli import run
from groupwise.nets import FastNet
from groupwise.optim.warmup_linear import WarmupLinearLR

FAST = str(ROOT / "configs" / "fast.yaml")
TINY = ["--model.net.init_args.widths", "[8, 16, 16]", "--model.net.init_args.stem_width", "8"]
EPOCHS = 2
BATCH = ["--data.batch_size", "8"]  # per device
STEPS_PER_EPOCH = math.ceil(60 / 8)


def fast_args(data_dir: Path, root: Path, *extra: str) -> list[str]:
    return ["--config", FAST, *quick(data_dir, root, *BATCH, *TINY, *extra)]


def last_checkpoint(root: Path) -> dict:
    return load(root / "lightning_logs/version_0/checkpoints/last.ckpt")


@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fast-single")
    fit = run(["fit", *fast_args(data_dir, root, "--trainer.max_epochs", str(EPOCHS))])
    return {"cli": fit, "last": last_checkpoint(root)}


def test_checkpoint_records_the_recipe(single):
    saved = single["last"]["hyper_parameters"]
    assert saved["tta_flip"] is True and saved["channels_last"] is True
    assert saved["compile"] is False and saved["label_smoothing"] == 0.2
    assert saved["net"]["class_path"] == "groupwise.nets.FastNet"
    assert saved["scheduler"]["class_path"] == "groupwise.optim.WarmupLinearLR"
    assert saved["scheduler"]["init_args"]["total_steps"] is None  # the config: from the run
    assert saved["scheduler_interval"] == "step"
    assert [rule["name"] for rule in saved["param_groups"]] == ["norm", "weights"]
    assert isinstance(single["cli"].model.net, FastNet)


def test_checkpoint_scheduler_length_is_epochs_times_steps_per_epoch(single):
    last = single["last"]
    (scheduler,) = last["lr_schedulers"]
    assert scheduler["total_steps"] == EPOCHS * STEPS_PER_EPOCH == 16
    assert scheduler["last_epoch"] == last["global_step"] == 16
    # stepped past its last step: end_factor 0 times each group's peak lr (the config's)
    config = yaml.safe_load(Path(FAST).read_text())["model"]
    peak = config["optimizer"]["init_args"]["lr"]
    peaks = [peak * config["param_groups"][0]["lr_scale"], peak]
    # the factor scales each group's own peak lr
    assert scheduler["base_lrs"] == peaks
    groups = last["optimizer_states"][0]["param_groups"]
    assert [(group["name"], group["lr"]) for group in groups] == [("norm", 0.0), ("weights", 0.0)]


def test_channels_last_and_tta_flip_are_in_effect_after_the_fit(single):
    fit = single["cli"]
    convs = [p for p in fit.model.net.parameters() if p.ndim == 4]
    assert len(convs) == 7
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert all(not p.is_contiguous() for p in convs)
    assert fit.model.tta_flip is True


# ---- DDP: 2 gloo ranks on CPU --------------------------------------------------------------


def record(out: Path) -> str:
    spec = {"class_path": "fault_injection.RecordRank", "init_args": {"out": str(out)}}
    return f"--trainer.callbacks+={json.dumps(spec)}"


@pytest.mark.slow
def test_ddp_runs_the_recipe_unchanged_with_half_the_steps(single, data_dir, tmp_path):
    ddp = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    args = fast_args(data_dir, tmp_path, "--trainer.max_epochs", str(EPOCHS), *ddp)
    done = groupwise("fit", *args, record(tmp_path / "ranks"))
    assert done.returncode == 0, done.stderr[-4000:]

    last = last_checkpoint(tmp_path)
    (scheduler,) = last["lr_schedulers"]
    (single_scheduler,) = single["last"]["lr_schedulers"]
    assert scheduler["total_steps"] * 2 == single_scheduler["total_steps"] == 16
    assert scheduler["total_steps"] == EPOCHS * math.ceil(30 / 8) == 8
    assert scheduler["last_epoch"] == last["global_step"] == 8

    # the schedule, logged at every step: warm-up round(0.2 * 8) = 2 steps from 0.001, then
    # linear decay to 0 at step 8
    logged = scalars(tmp_path / "lightning_logs/version_0")
    steps, lrs = zip(*logged["lr-SGD/weights"], strict=True)
    assert steps == tuple(range(8))
    peak = yaml.safe_load(Path(FAST).read_text())["model"]["optimizer"]["init_args"]["lr"]
    factors = [0.001, 0.001 + 0.999 / 2] + [1 - (k - 2) / 6 for k in range(2, 8)]
    assert lrs == pytest.approx([peak * f for f in factors], rel=1e-6)

    rank0, rank1 = (load(path) for path in sorted((tmp_path / "ranks").glob("rank*.pt")))
    assert sorted(rank0["state_dict"]) == sorted(rank1["state_dict"])
    for key, value in rank0["state_dict"].items():  # weights and batch-norm statistics
        assert torch.equal(value, rank1["state_dict"][key]), key
    for key, value in last["state_dict"].items():
        assert torch.equal(value, rank0["state_dict"][key]), key
    # each rank trained on its own half of the 60 images every epoch
    for epoch in range(EPOCHS):
        seen0, seen1 = rank0["seen"][epoch], rank1["seen"][epoch]
        assert len(seen0) == len(seen1) == 30 and not set(seen0) & set(seen1)


# ---- bf16 mixed precision on CPU -----------------------------------------------------------


def test_bf16_mixed_runs_the_full_size_recipe_on_cpu_with_finite_loss(data_dir, tmp_path):
    extra = ["--trainer.precision", "bf16-mixed", "--trainer.max_steps", "2"]
    cli = run(["--config", FAST, *quick(data_dir, tmp_path, *extra)], run=False)
    assert cli.model.net.backbone[1].conv1.conv.out_channels == 32  # the shipped widths
    dtypes: list[torch.dtype] = []
    cli.model.net.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

    assert cli.trainer.global_step == 2
    assert cli.trainer.precision == "bf16-mixed"
    assert dtypes[:2] == [torch.bfloat16, torch.bfloat16]  # the training forwards ran in bf16
    scheduler = cli.trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, WarmupLinearLR) and scheduler.total_steps == 2
    losses = [value for _, value in scalars(Path(cli.trainer.logger.log_dir))["train/loss"]]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())

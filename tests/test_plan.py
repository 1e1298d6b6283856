"""The group plan: the real scheduler of a config stepped per epoch, its tables and plot."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from groupwise.plan import configure, load, lr_rows, lr_schedule, plot_lr_schedule

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "configs" / "lenet.yaml")
RESNET18 = str(ROOT / "configs" / "resnet18.yaml")
HALVING = [
    "--model.optimizer.init_args.lr", "0.01",
    "--model.scheduler.init_args.milestones", "[1, 2]",
    "--model.scheduler.init_args.gamma", "0.5",
]  # fmt: skip


def test_lenet_schedule_from_the_real_scheduler_without_data(tmp_path):
    missing = tmp_path / "no-data"
    cli = load(["--config", LENET, *HALVING, "--data.data_dir", str(missing)])
    optimizer, scheduler, frequency = configure(cli.model)
    assert isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR) and frequency == 1
    assert lr_schedule(optimizer, scheduler, 4) == {
        "features": [0.01, 0.005, 0.0025, 0.0025],
        "classifier": [0.1, 0.05, 0.025, 0.025],
    }
    assert not missing.exists()  # nothing read, nothing downloaded


def test_resnet18_schedule_four_groups_and_rows(tmp_path):
    cli = load(["--config", RESNET18, "--data.data_dir", str(tmp_path)])
    assert cli.trainer.max_epochs == 200
    optimizer, scheduler, frequency = configure(cli.model)
    schedule = lr_schedule(optimizer, scheduler, cli.trainer.max_epochs, frequency)
    assert list(schedule) == ["backbone", "backbone.no_decay", "head", "head.no_decay"]
    for lrs in schedule.values():
        assert len(lrs) == 200
        assert lrs[:60] == [0.1] * 60
        assert lrs[60:120] == pytest.approx([0.02] * 60)
        assert lrs[120:160] == pytest.approx([0.004] * 40)
        assert lrs[160:] == pytest.approx([0.0008] * 40)
    rows = lr_rows(schedule)
    assert [row["epochs"] for row in rows] == ["0-59", "60-119", "120-159", "160-199"]
    assert [row["head"] for row in rows] == pytest.approx([0.1, 0.02, 0.004, 0.0008])


def test_scheduler_frequency_steps_every_nth_epoch():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    # Lightning steps after epoch e when (e + 1) % frequency == 0: after epochs 1 and 3.
    assert lr_schedule(optimizer, scheduler, 5, frequency=2) == {"pg0": [1, 1, 0.5, 0.5, 0.25]}


def test_rows_are_the_runs_without_a_change():
    rows = lr_rows({"a": [1.0, 1.0, 0.5, 0.5, 0.5], "b": [2.0, 2.0, 2.0, 1.0, 1.0]})
    assert rows == [
        {"epochs": "0-1", "a": 1.0, "b": 2.0},
        {"epochs": "2", "a": 0.5, "b": 2.0},
        {"epochs": "3-4", "a": 0.5, "b": 1.0},
    ]


def test_plateau_scheduler_has_no_plan(tmp_path):
    cli = load(
        ["--config", LENET, "--model.scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"]
    )
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        configure(cli.model)


def test_plot_is_a_png_with_one_line_per_group(tmp_path):
    schedule = {"features": [0.01, 0.005, 0.0025], "classifier": [0.1, 0.05, 0.025]}
    path = plot_lr_schedule(schedule, tmp_path / "sub" / "plan.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (700, 380)
        colours = image.convert("RGB").getcolors(maxcolors=100_000)
    # Matplotlib's first two line colours (C0 blue, C1 orange) are both drawn.
    drawn = {colour for _, colour in colours}
    assert {(31, 119, 180), (255, 127, 14)} <= drawn


def plan_script(*args: str) -> subprocess.CompletedProcess:
    """``scripts/plan.py ARGS`` in a subprocess; asserts it succeeded."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plan.py"), *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_script_prints_both_tables_and_writes_the_png(tmp_path):
    png = tmp_path / "lr.png"
    done = plan_script("--config", LENET, *HALVING, "--epochs", "3", "--png", str(png))
    out = done.stdout
    assert "SGD parameter groups:" in out
    assert re.search(r"features\s+4\s+2,872\s+0.01\s+0.0005\s+0.9\n", out)
    assert re.search(r"classifier\s+6\s+59,134\s+0.1\s+0.0005\s+0.9\n", out)
    assert "over 3 epochs" in out
    assert re.search(r"epochs\s+features\s+classifier\n", out)
    for epoch, features, classifier in [(0, 0.01, 0.1), (1, 0.005, 0.05), (2, 0.0025, 0.025)]:
        assert re.search(rf"\n{epoch}\s+{features}\s+{classifier}\n", out)
    assert png.is_file() and f"wrote {png}" in out
    assert "Seed set" not in done.stderr  # Lightning's chatter is hidden


def test_script_shows_each_group_s_optimizer(tmp_path):
    overlay = tmp_path / "muon.yaml"
    overlay.write_text(
        "model:\n  param_groups:\n"
        "    - {name: features, params: ['features.*.weight'],"
        " optimizer: {class_path: groupwise.optim.Muon, init_args: {lr: 0.02}}}\n"
        "    - {name: classifier, modules: [classifier], lr_scale: 10.0}\n"
    )
    out = plan_script("--config", LENET, "--config", str(overlay), *HALVING, "--epochs", "2").stdout
    assert "CombinedOptimizer parameter groups:" in out
    assert re.search(r"name\s+optimizer\s+tensors\s+parameters\s+lr\s+weight_decay\s+momentum", out)
    assert re.search(r"features\s+Muon\s+2\s+2,850\s+0.02\s+0.1\s+0.95\n", out)
    assert re.search(r"classifier\s+SGD\s+6\s+59,134\s+0.1\s+0.0005\s+0.9\n", out)
    assert re.search(r"default\s+SGD\s+2\s+22\s+0.01\s+0.0005\s+0.9\n", out)
    assert re.search(r"\n1\s+0.01\s+0.05\s+0.005\n", out)  # each group halved at epoch 1

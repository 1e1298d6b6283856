"""The group plan: the real scheduler of a config stepped per epoch, its tables and plot."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_run import quick, scalars
from PIL import Image

from groupwise.cli import run
from groupwise.optim.muon import auto_ns_dtype
from groupwise.plan import configure, load, lr_rows, lr_schedule, main, plot_lr_schedule

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "configs" / "lenet.yaml")
RESNET18 = str(ROOT / "configs" / "resnet18.yaml")
HALVING = [
    "--model.optimizer.init_args.lr", "0.01",
    "--model.scheduler.init_args.milestones", "[1, 2]",
    "--model.scheduler.init_args.gamma", "0.5",
]  # fmt: skip


TINY_FAST = ["--model.net.init_args.widths", "[8, 16, 16]", "--model.net.init_args.stem_width", "8"]


def test_lenet_schedule_from_the_real_scheduler_without_data(tmp_path):
    missing = tmp_path / "no-data"
    cli = load(["--config", LENET, *HALVING, "--data.data_dir", str(missing)])
    setup = configure(cli)
    assert isinstance(setup.scheduler, torch.optim.lr_scheduler.MultiStepLR)
    assert setup.steps_per_epoch == 1
    assert lr_schedule(setup.optimizer, setup.scheduler, 4) == {
        "features": [0.01, 0.005, 0.0025, 0.0025],
        "classifier": [0.1, 0.05, 0.025, 0.025],
    }
    assert not missing.exists()  # nothing read, nothing downloaded


def test_resnet18_schedule_four_groups_and_rows(tmp_path):
    cli = load(["--config", RESNET18, "--data.data_dir", str(tmp_path)])
    assert cli.trainer.max_epochs == 200
    setup = configure(cli)
    schedule = lr_schedule(setup.optimizer, setup.scheduler, cli.trainer.max_epochs)
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


def test_plateau_scheduler_has_no_plan_said_in_one_line(tmp_path, capsys):
    args = ["--config", LENET, "--model.scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--data.data_dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.endswith(
        "plan.py: error: ReduceLROnPlateau follows a validation metric: it has no plan\n"
    )


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_the_plan_of_every_shipped_config(config, tmp_path, capsys):
    """No data yet: CIFAR-10's 50,000 training images are counted (what a download brings)."""
    main(["--config", str(ROOT / "configs" / config), "--data.data_dir", str(tmp_path / "none")])
    out = capsys.readouterr().out
    assert "parameter groups:" in out
    assert "learning rate per group" in out
    if config == "fast.yaml":  # per-step: 45,000 images in batches of 128, 12 epochs
        assert "per-step schedule: 352 optimizer steps per epoch (45,000 training images" in out
        # step 0: 0.001 of the peak lrs (weights 0.1, norm 0.4); epoch 1 starts at step 352
        # of a warm-up of round(0.2 * 4224) = 845 steps: 0.001 + 0.999 * 352 / 845
        assert re.search(r"\n0\s+0\s+0.0004\s+0.0001\n", out)
        factor = 0.001 + 0.999 * 352 / 845
        assert re.search(rf"\n1\s+352\s+{0.4 * factor:g}\s+{0.1 * factor:g}\n", out)
        assert re.search(r"\n11\s+3,872\s", out) and "\n12 " not in out


def test_the_plan_counts_the_steps_the_trainer_makes_and_gives_its_lrs(data_dir, tmp_path, capsys):
    """The fast recipe on the 60 fake training images in batches of 8, 2 epochs: the plan's
    per-step lrs are the ones the real run logs."""
    args = ["--config", str(ROOT / "configs" / "fast.yaml")] + quick(
        data_dir, tmp_path, "--data.batch_size", "8", "--trainer.max_epochs", "2", *TINY_FAST
    )
    fit = run(["fit", *args])
    assert fit.trainer.estimated_stepping_batches == 16
    setup = configure(load(args))
    assert setup.steps_per_epoch == 8 and setup.train_images == 60
    assert setup.scheduler.total_steps == 16
    planned = lr_schedule(setup.optimizer, setup.scheduler, 16)
    logged = scalars(Path(fit.trainer.log_dir))
    for group in ("norm", "weights"):
        assert [v for _, v in logged[f"lr-SGD/{group}"]] == pytest.approx(planned[group], rel=1e-6)


def test_the_plan_of_a_one_cycle_schedule_with_its_total_steps(tmp_path, capsys):
    args = ["--config", str(ROOT / "configs" / "fast.yaml"), "--data.data_dir", str(tmp_path)]
    one_cycle = ["--model.scheduler", "torch.optim.lr_scheduler.OneCycleLR"]
    one_cycle += ["--model.scheduler.init_args.max_lr", "0.1"]
    one_cycle += ["--model.scheduler.init_args.total_steps", "4224"]
    main([*args, *one_cycle, "--epochs", "2", "--png", str(tmp_path / "plan.png")])
    out = capsys.readouterr().out
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in (0.4, 0.1)]
    optimizer = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    reference = torch.optim.lr_scheduler.OneCycleLR(optimizer, [0.4, 0.1], total_steps=4224)
    for _ in range(352):
        optimizer.step(), reference.step()
    norm, weights = reference.get_last_lr()
    assert re.search(rf"\n1\s+352\s+{norm:g}\s+{weights:g}\n", out)
    assert (tmp_path / "plan.png").is_file()


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
    ns = str(auto_ns_dtype(torch.device("cpu"))).removeprefix("torch.")  # this CPU's choice
    assert re.search(rf"features\s+Muon \(ns {ns}\)\s+2\s+2,850\s+0.02\s+0.1\s+0.95\n", out)
    # the plan runs on this machine's CPU; a fit decides ns_dtype auto on its own device
    assert (
        f"ns: Muon's ns_dtype auto is {ns} on this machine's CPU; a fit decides it on its own"
        " device (bfloat16 on a GPU of compute capability 8.0 or newer)"
    ) in out
    assert re.search(r"classifier\s+SGD\s+6\s+59,134\s+0.1\s+0.0005\s+0.9\n", out)
    assert re.search(r"default\s+SGD\s+2\s+22\s+0.01\s+0.0005\s+0.9\n", out)
    assert re.search(r"\n1\s+0.01\s+0.05\s+0.005\n", out)  # each group halved at epoch 1

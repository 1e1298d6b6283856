"""`groupwise lr_find`: one multiplier swept over every group, and where it suggests.

The sweep runs through the real `Trainer` (`GroupwiseTrainer.lr_find`, or the CLI on the
shipped configs); an independent callback (`fault_injection.RecordGroupLRs`) reads every
group's lr from the optimizer just before each step.
"""

import json
import math
import re

import pytest
import torch
from cli_run import LENET, ROOT, f32, groupwise, quick, scalars
from file_snapshot import snapshot
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.tuner import Tuner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import TensorDataset

from groupwise.cli import run
from groupwise.trainer import GroupwiseTrainer
from groupwise.tuner import RangeTest, multipliers, smooth
from groupwise.tuner.lr_finder import plot_range_test

FAST = str(ROOT / "configs" / "fast.yaml")


def record(out) -> str:
    spec = {"class_path": "fault_injection.RecordGroupLRs", "init_args": {"out": str(out)}}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def sweep_multipliers(low: float, high: float, steps: int) -> list[float]:
    """The geometric sweep, written out independently of the code under test."""
    return [low * (high / low) ** (k / (steps - 1)) for k in range(steps)]


def test_every_group_is_swept_at_its_configured_lr_times_one_multiplier(data_dir, tmp_path, capsys):
    """configs/lenet.yaml: features at 0.005, classifier at 10x. At every step both groups
    have their configured lr times that step's multiplier: the 10x ratio holds throughout."""
    data_before = snapshot(data_dir)
    args = quick(data_dir, tmp_path, record(tmp_path / "lrs"), "--trainer.max_epochs", "1")
    sweep = ["--num_steps", "12", "--max_multiplier", "1e4", "--early_stop_threshold", "null"]
    run(["lr_find", "--config", LENET, *args, *sweep])

    (steps,) = [json.loads(p.read_text()) for p in (tmp_path / "lrs").glob("rank*.json")]
    m = sweep_multipliers(1e-3, 1e4, 12)
    assert [s["features"] for s in steps] == [0.005 * x for x in m]
    assert [s["classifier"] for s in steps] == [0.05 * x for x in m]
    assert all(s["classifier"] / s["features"] == pytest.approx(10, rel=1e-12) for s in steps)
    # 3 steps per epoch: the sweep ran on past trainer.max_epochs (1) to its 12 steps.
    assert len(steps) == 12

    # The same values in TensorBoard, with each step's multiplier and loss.
    run_dir = tmp_path / "lightning_logs" / "version_0"
    tags = scalars(run_dir)
    assert [v for _, v in tags["lr_find/lr/classifier"]] == f32([0.05 * x for x in m])
    assert [v for _, v in tags["lr_find/multiplier"]] == f32(m)
    assert len(tags["lr_find/loss"]) == 12
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    assert events.Tags()["images"] == ["lr_find"]  # the plot
    assert (run_dir / "lr_find.png").stat().st_size > 10_000

    # No checkpoint, no validation; the data on disk is as it was.
    assert not list(tmp_path.rglob("*.ckpt"))
    assert "val/loss" not in tags
    after = snapshot(data_dir)
    assert {path: after[path] for path in data_before} == data_before
    out = capsys.readouterr().out
    assert "Learning-rate range test: 12 of 12 steps, multiplier 0.001 to 1e+04" in out
    assert "warms up" not in out  # MultiStepLR starts at the configured lrs


def test_a_warmup_config_is_swept_from_its_peak_lrs(data_dir, tmp_path, capsys):
    """configs/fast.yaml's WarmupLinearLR sets every lr to 0.001 x its peak when it is built;
    the configured lrs are the peaks (0.1 and the norm group's 4x), not the warm-up's start."""
    args = quick(data_dir, tmp_path, record(tmp_path / "lrs"), "--model.channels_last", "false")
    run(["lr_find", "--config", FAST, *args, "--num_steps", "6", "--max_multiplier", "1"])
    assert "Note: the config's schedule warms up to these lrs" in capsys.readouterr().out
    (steps,) = [json.loads(p.read_text()) for p in (tmp_path / "lrs").glob("rank*.json")]
    m = sweep_multipliers(1e-3, 1, 6)
    assert [s["weights"] for s in steps] == [0.1 * x for x in m]
    assert [s["norm"] for s in steps] == [pytest.approx(0.4 * x, rel=1e-15) for x in m]


def test_the_model_is_not_trained_and_the_override_gives_the_printed_lrs(
    data_dir, tmp_path, capsys
):
    args = quick(data_dir, tmp_path)
    cli = run(["--config", LENET, *args], run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    test = cli.trainer.lr_find(cli.model, cli.datamodule, num_steps=12, max_multiplier=1e5)
    after = cli.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

    out = capsys.readouterr().out
    assert test.suggestion is not None  # at up to 1e5 x the lrs, the loss diverges
    multiplier = float(re.search(r"To train at it: --model\.lr_multiplier (\S+)", out)[1])
    table = suggested_table(out)
    # the override is the suggestion to 2 digits; every group's lr is its configured one x it
    assert multiplier == float(f"{test.suggestion:.2g}")
    expected = {"features": 0.005 * multiplier, "classifier": 0.05 * multiplier}
    assert table == {name: pytest.approx(lr, rel=1e-5) for name, lr in expected.items()}
    assert f"  model.optimizer lr {0.005 * multiplier:g}" in out.splitlines()


# A quadratic with a known best lr: two blocks of weights, each a noisy least-squares problem
# whose inputs have variance h, so the expected Hessian of that block is h times the identity.
# Plain SGD on it converges for lr < 2 / h and fastest at lr = 1 / h. The blocks' curvatures
# differ 10x and so do their configured lrs (a group "stiff" at 0.01, a group "soft" at 0.1):
# the best multiplier is 10 for both.
CURVATURE = {"stiff": 10.0, "soft": 1.0}
CONFIGURED_LR = {"stiff": 0.01, "soft": 0.1}
BEST_MULTIPLIER = 10.0


class Quadratic(LightningModule):
    def __init__(self, seed: int, dim: int = 8) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.target = {k: torch.randn(dim, generator=generator) for k in CURVATURE}
        self.weights = nn.ParameterDict(
            {k: nn.Parameter(t + 3 * torch.randn(dim, generator=generator))
             for k, t in self.target.items()}
        )  # fmt: skip
        self.recorded: list[dict[str, float]] = []

    def training_step(self, batch, batch_idx):
        loss = 0
        for name, x, noise in zip(CURVATURE, batch[:2], batch[2:], strict=True):
            residual = x @ (self.weights[name] - self.target[name]) + noise
            loss = loss + 0.5 * residual.pow(2).mean()
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        self.recorded.append({g["name"]: g["lr"] for g in optimizer.param_groups})

    def configure_optimizers(self):
        groups = [
            {"name": name, "params": [self.weights[name]], "lr": lr}
            for name, lr in CONFIGURED_LR.items()
        ]
        return torch.optim.SGD(groups, lr=0.01)


def quadratic_data(seed: int, dim: int = 8, batch: int = 32, steps: int = 100):
    generator = torch.Generator().manual_seed(seed + 1000)
    n = batch * steps
    xs = [torch.randn(n, dim, generator=generator) * math.sqrt(h) for h in CURVATURE.values()]
    noise = [0.1 * torch.randn(n, generator=generator) for _ in CURVATURE]
    return LightningDataModule.from_datasets(TensorDataset(*xs, *noise), batch_size=batch)


def trainer(root) -> GroupwiseTrainer:
    return GroupwiseTrainer(
        accelerator="cpu",
        default_root_dir=root,
        logger=TensorBoardLogger(root),
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_suggestion_on_a_quadratic_is_within_2x_of_the_best_lr(tmp_path, seed):
    test = trainer(tmp_path).lr_find(
        Quadratic(seed), quadratic_data(seed), min_multiplier=1e-3, max_multiplier=1e3
    )
    assert test.lrs["stiff"] == [0.01 * m for m in test.multipliers]
    assert test.lrs["soft"] == [0.1 * m for m in test.multipliers]
    assert test.stop_reason and "passed 4 x its lowest" in test.stop_reason  # it diverged
    assert BEST_MULTIPLIER / 2 <= test.suggestion <= 2 * BEST_MULTIPLIER
    # the loss is seen diverging past SGD's stability limit, 2 / h: multiplier 20
    assert test.multipliers[test.divergence] > 2 * BEST_MULTIPLIER


def test_lightnings_finder_sweeps_every_group_at_one_lr(tmp_path):
    """What this finder is for: Lightning's own sweeps the 10x group at 1x, so no single lr
    it can suggest suits both blocks. (It replaces the trainer's callbacks during its sweep:
    the model's own hook records the lrs.)"""
    model = Quadratic(0)
    tuner_trainer = GroupwiseTrainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=False,
        enable_progress_bar=False, enable_model_summary=False, max_epochs=1,
    )  # fmt: skip
    Tuner(tuner_trainer).lr_find(
        model,
        datamodule=quadratic_data(0),
        min_lr=1e-5,
        max_lr=10.0,
        num_training=20,
        update_attr=False,
    )
    assert len(model.recorded) > 10  # (it stops early when the loss diverges)
    assert all(lrs["stiff"] == lrs["soft"] for lrs in model.recorded)


def test_a_non_finite_loss_stops_the_sweep(tmp_path):
    test = trainer(tmp_path).lr_find(
        Quadratic(0), quadratic_data(0), max_multiplier=1e12, early_stop_threshold=None
    )
    assert len(test.losses) < 100
    assert not math.isfinite(test.losses[-1])
    assert test.stop_reason == f"the loss was {test.losses[-1]} at step {len(test.losses) - 1}"
    assert test.finite_steps() == len(test.losses) - 1


def test_bad_sweep_options_name_the_value(tmp_path):
    with pytest.raises(ValueError, match=r"min_multiplier < max_multiplier, got min_multiplier=1"):
        trainer(tmp_path).lr_find(
            Quadratic(0), quadratic_data(0), min_multiplier=1, max_multiplier=1
        )
    with pytest.raises(ValueError, match="num_steps must be at least 2, got 1"):
        multipliers(0.1, 1, 1)
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\), got 1"):
        smooth([1.0], 1)


def test_divergence_and_suggestion_on_a_written_curve():
    """Falls from 2.0 to 0.5, then climbs; a one-step spike at step 3 is ignored."""
    losses = [2.0, 2.0, 2.0, 9.0, 1.5, 1.0, 0.5, 0.5, 0.5, 0.5, 0.8, 1.5, 3.0, 6.0]
    m = [2.0**k for k in range(len(losses))]
    test = RangeTest(m, losses, {}, {}, len(losses), m[0], m[-1], smoothing=0.0)
    # beta 0: the running median of 5 alone (of 3 and 4 values at the ends)
    assert test.smoothed == [2, 2, 2, 2, 1.5, 1, 0.5, 0.5, 0.5, 0.5, 0.8, 1.5, 2.25, 3]
    # above sqrt(0.5 x 2.0) = 1.0 first at step 11 (the lowest is at step 6)
    assert test.divergence == 11
    assert test.suggestion == 2.0**11 / 3


FAST_MUON = str(ROOT / "configs" / "fast_muon.yaml")


def suggested_table(out: str) -> dict[str, float]:
    """The printed table's group -> lr at the suggestion."""
    block = out.split("lr at x", 1)[1].split("\n\n", 1)[0].split("To train at it", 1)[0]
    rows = [line.split() for line in block.splitlines()[2:] if line.strip()]
    return {row[0]: float(row[2]) for row in rows}


def override_of(out: str) -> list[str]:
    return re.search(r"To train at it: (.+)\n", out)[1].split()


def lrs_of_fit_with(args: list[str]) -> dict[str, float]:
    """Each group's lr in the optimizer that `groupwise fit ARGS` builds (before its
    scheduler changes any)."""
    cli = run(list(args), run=False)
    return {g["name"]: g["lr"] for g in cli.model.build_optimizer().param_groups}


def test_the_override_gives_every_group_of_every_optimizer_the_lr_in_the_table(
    data_dir, tmp_path, capsys
):
    """configs/fast_muon.yaml: the Muon filters have their own optimizer's lr (0.08). Pasted
    into a fit, the printed override gives every group, filters included, the table's lr
    (here on top of an lr_multiplier of 2 already in the config)."""
    args = ["--config", FAST_MUON, *quick(data_dir, tmp_path, "--model.channels_last", "false")]
    args += ["--model.lr_multiplier", "2"]
    run(["lr_find", *args, "--num_steps", "12", "--max_multiplier", "1e5"])
    out = capsys.readouterr().out
    table = suggested_table(out)
    assert set(table) == {"filters", "norm", "default"}
    lrs = lrs_of_fit_with([*args, *override_of(out)])
    assert lrs == {name: pytest.approx(lr, rel=1e-5) for name, lr in table.items()}
    # the same lrs from the config's values, one per optimizer
    multiplier = float(re.search(r"lr at x(\S+)", out)[1])
    assert f"  model.optimizer lr {0.1 * 2 * multiplier:g}" in out.splitlines()
    assert f"  rule 'filters': optimizer lr {0.08 * 2 * multiplier:g}" in out.splitlines()


LAYER_DECAY_RULE = (
    '[{"name": "features", "modules": ["features.0", "features.3"], "layer_decay": 0.5, '
    '"lr": 0.01}]'
)


def test_a_layer_decay_rule_with_its_own_lr_gets_one_value(data_dir, tmp_path, capsys):
    """The rule sets one lr (0.01; its two parts at 0.0025 and 0.005): the advice names the
    rule once, with its lr times the suggested multiplier; the override moves both parts."""
    args = [
        "--config", LENET, *quick(data_dir, tmp_path, "--model.param_groups", LAYER_DECAY_RULE)
    ]  # fmt: skip
    sweep = ["--num_steps", "12", "--max_multiplier", "1e5", "--early_stop_threshold", "null"]
    run(["lr_find", *args, *sweep])
    out = capsys.readouterr().out
    multiplier = float(re.search(r"lr at x(\S+)", out)[1])
    advice = [line for line in out.splitlines() if "'features" in line]
    assert advice == [f"  rule 'features': lr {0.01 * multiplier:g}"]
    table = suggested_table(out)
    assert table["features.features.3"] == pytest.approx(0.005 * multiplier, rel=1e-5)
    lrs = lrs_of_fit_with([*args, *override_of(out)])
    assert lrs == {name: pytest.approx(lr, rel=1e-5) for name, lr in table.items()}


def test_a_sweep_stopped_by_a_loss_that_jumps_in_one_step_has_diverged_there():
    """Falling, then one step 600x up: the early stop fires at that step, and the running
    median drops a one-step jump, so the smoothed curve never climbs. The sweep printed
    "Stopped early: ... passed 4 x its lowest" and then "No suggestion: the loss did not
    diverge"; the step at which it stopped is where it diverged."""
    losses = [2.3, 2.2, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1000.0]
    m = [10.0**k for k in range(len(losses))]
    stop = "at step 9 the loss's moving average (300) passed 4 x its lowest (1.6) and ..."
    test = RangeTest(m, losses, {}, {}, 12, m[0], m[-1], smoothing=0.7, stop_reason=stop)
    assert max(test.smoothed) < 2.3  # the jump is not in the smoothed curve
    assert test.divergence == 9
    assert test.suggestion == 1e9 / 3
    # a sweep that ran to its end without stopping still has no divergence
    flat = RangeTest(m, losses[:9], {}, {}, 9, m[0], m[8], smoothing=0.7)
    assert flat.divergence is None


def test_a_sweep_stopped_by_a_non_finite_loss_after_a_falling_one_plots(tmp_path):
    losses = [2.3, 2.2, 2.1, 2.0, 1.9, 1.8, 1.7, 1.6, 1.5, math.nan]
    m = [10.0**k for k in range(len(losses))]
    test = RangeTest(m, losses, {}, {}, 12, m[0], m[-1], stop_reason="the loss was nan at step 9")
    assert test.divergence == 9
    path, _ = plot_range_test(test, tmp_path / "plot.png")
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("value", ["0", "-1"])  # inf, nan: refused by jsonargparse
def test_a_bad_lr_multiplier_is_one_error_naming_it(data_dir, tmp_path, value):
    result = groupwise(
        "fit", "--config", LENET, *quick(data_dir, tmp_path, "--model.lr_multiplier", value)
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: model.lr_multiplier must be a finite number above 0, got {float(value)}"
    )
    assert not (tmp_path / "lightning_logs").exists()

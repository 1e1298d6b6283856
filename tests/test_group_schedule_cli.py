"""A schedule per named group through the ``groupwise`` command: the lrs of a real fit, in
TensorBoard, across a SIGTERM and a resume, and with ``extend_schedule``.

LeNet-5 on 60 training images in batches of 20: 3 optimizer steps per epoch. ``features``
has its own schedule, airbench94's whitening bias's: linear from its lr (0.01) to 0 over
3 epochs (9 steps), then frozen; ``classifier`` (10x) follows the run's scheduler.
"""

import json
import math
from pathlib import Path

import pytest
from cli_run import LENET, groupwise, load, quick
from lightning.pytorch import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_preemption import RESUMABLE, signal_at
from test_resume import SCHEDULE, assert_same_state

from groupwise.cli import run

pytestmark = pytest.mark.slow

FEATURES = {
    "name": "features",
    "modules": ["features"],
    "schedule": {"shape": "linear", "epochs": 3, "freeze_at_end": True},
}
CLASSIFIER = {"name": "classifier", "modules": ["classifier"], "lr_scale": 10.0}
GROUPS = ["--model.param_groups", json.dumps([FEATURES, CLASSIFIER])]
# the run: 4 epochs; the classifier's lr halves at epochs 1 and 2 (test_resume's schedule)
RECIPE = ["--config", LENET, *SCHEDULE, "--trainer.max_epochs", "4", *GROUPS]
LENGTH = 9  # the features' schedule, in optimizer steps
STEPS = 12


def features_lr(step: int) -> float:
    return 0.01 * (1 - step / LENGTH) if step < LENGTH else 0.0


class RecordLrs(Callback):
    """Each group's lr at every optimizer step, by global step."""

    def __init__(self) -> None:
        self.lrs: dict[int, dict[str, float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs[trainer.global_step] = {g["name"]: g["lr"] for g in optimizer.param_groups}


RECORD = '--trainer.callbacks+={"class_path": "test_group_schedule_cli.RecordLrs"}'


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("uninterrupted")
    done = groupwise("fit", *RECIPE, *quick(data_dir, root))
    assert done.returncode == 0, done.stderr[-3000:]
    return root, load(root / "lightning_logs/version_0/checkpoints/last.ckpt")


def test_each_group_s_lr_at_each_step_in_tensorboard(uninterrupted):
    """The tags are the run's own (lr-SGD/<group>), one point per step."""
    root, _ = uninterrupted
    events = EventAccumulator(str(root / "lightning_logs/version_0"))
    events.Reload()
    logged = {
        tag: [(e.step, e.value) for e in events.Scalars(f"lr-SGD/{tag}")]
        for tag in ("features", "classifier")
    }
    assert [step for step, _ in logged["features"]] == list(range(STEPS))
    assert [v for _, v in logged["features"]] == pytest.approx(
        [features_lr(s) for s in range(STEPS)], rel=1e-6, abs=1e-9
    )  # float32 in the event file
    assert [v for _, v in logged["classifier"]] == pytest.approx(
        [0.1] * 3 + [0.05] * 3 + [0.025] * 6, rel=1e-6
    )


def test_the_group_table_names_each_group_s_schedule(uninterrupted):
    root, _ = uninterrupted
    table = (root / "lightning_logs/version_0/param_groups.txt").read_text()
    assert "linear 1->0 over 3 epochs, then frozen" in table.splitlines()[2]
    assert table.splitlines()[3].rstrip().endswith("model.scheduler")


@pytest.mark.parametrize(
    ("where", "step"),
    [
        ({"step": 4}, 5),  # mid-epoch 1, in the middle of the features' schedule
        ({"step": 9}, 10),  # the first step after its end: the features are frozen
    ],
)
def test_sigterm_then_resume_matches_an_uninterrupted_run(
    data_dir, tmp_path, uninterrupted, where, step
):
    """Weights, momentum buffers (a frozen group's stay as they were: a resume that did not
    freeze it again would add its gradients), every group's lr and both schedulers' states."""
    args = [*RECIPE, *quick(data_dir, tmp_path)]
    stopped = groupwise("fit", *args, signal_at(tmp_path / "stamp", **where))
    assert stopped.returncode == RESUMABLE, stopped.stderr[-3000:]
    saved = load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert saved["global_step"] == step
    assert len(saved["lr_schedulers"]) == 2  # the run's MultiStepLR, the groups' curves
    resumed = groupwise("fit", *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt")
    assert_same_state(final, uninterrupted[1])


def test_a_resume_with_another_group_schedule_is_refused_naming_it(data_dir, tmp_path):
    args = [*RECIPE, *quick(data_dir, tmp_path)]
    stopped = groupwise("fit", *args, signal_at(tmp_path / "stamp", step=1))
    assert stopped.returncode == RESUMABLE, stopped.stderr[-3000:]
    other = dict(FEATURES, schedule={"shape": "cosine", "epochs": 3, "freeze_at_end": True})
    changed = ["--model.param_groups", json.dumps([other, CLASSIFIER])]
    path = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    resumed = groupwise("fit", *args, *changed, "--ckpt_path", str(path))
    assert resumed.returncode == 2, resumed.stderr
    assert "group features: schedule: config {'shape': 'cosine'" in resumed.stderr


def test_extend_schedule_stretches_the_run_s_schedule_and_keeps_the_group_s(data_dir, tmp_path):
    """The run's WarmupLinearLR (no warm-up) planned over 2 epochs (6 steps), stopped
    after epoch 0 and resumed for 4 epochs (12 steps) with extend_schedule: the classifier's
    factor falls from 1 - 3/6 at step 3 to 0 at step 12; the features' own 3-epoch schedule
    goes on as it was."""
    scheduler = {"class_path": "groupwise.optim.WarmupLinearLR",
                 "init_args": {"warmup_fraction": 0.0, "end_factor": 0.0}}  # fmt: skip
    base = [
        "fit", "--config", LENET, *GROUPS, "--model.optimizer.init_args.lr", "0.01",
        "--model.scheduler", json.dumps(scheduler), "--model.scheduler_interval", "step",
        RECORD, *quick(data_dir, tmp_path),
    ]  # fmt: skip
    stop = '--trainer.callbacks+={"class_path": "test_extend_schedule.StopAfterEpoch", ' + (
        '"init_args": {"epoch": 0}}'
    )
    first = run([*base, "--trainer.max_epochs", "2", stop])
    resumed = run([*base, "--trainer.max_epochs", "4", "--model.extend_schedule", "true",
                   "--ckpt_path", "last"])  # fmt: skip
    lrs = {}
    for cli in (first, resumed):
        (recorder,) = [c for c in cli.trainer.callbacks if isinstance(c, RecordLrs)]
        lrs |= recorder.lrs
    assert list(lrs) == list(range(12))
    classifier = [0.1 * (1 - s / 6) for s in range(3)] + [
        0.1 * 0.5 * (12 - s) / 9 for s in range(3, 12)
    ]
    assert [lrs[s]["classifier"] for s in range(12)] == pytest.approx(classifier, rel=1e-12)
    assert [lrs[s]["features"] for s in range(12)] == [features_lr(s) for s in range(12)]


def test_lr_find_sweeps_every_group_from_its_peak(data_dir, tmp_path, capsys):
    """The features' own warm-up starts at 0; the sweep multiplies every group's configured
    lr (the curve's peak) by one multiplier, and says that the config warms up to them."""
    warming = dict(FEATURES, schedule={"shape": "warmup_linear", "steps": 6, "warmup": 0.5})
    spec = {"class_path": "fault_injection.RecordGroupLRs", "init_args": {"out": str(tmp_path)}}
    args = [
        "lr_find", "--config", LENET, "--model.param_groups", json.dumps([warming, CLASSIFIER]),
        *quick(data_dir, tmp_path), f"--trainer.callbacks+={json.dumps(spec)}",
        "--num_steps", "6", "--max_multiplier", "1",
    ]  # fmt: skip
    run(args)
    assert "Note: the config's schedule warms up to these lrs" in capsys.readouterr().out
    steps = json.loads((tmp_path / "rank0.json").read_text())
    multipliers = [1e-3 * (1 / 1e-3) ** (k / 5) for k in range(6)]
    assert [s["features"] for s in steps] == [0.005 * m for m in multipliers]
    assert [s["classifier"] for s in steps] == [0.05 * m for m in multipliers]


def test_a_muon_group_on_its_own_schedule(data_dir, tmp_path):
    """An optimizer per group (CombinedOptimizer): the Muon filters follow their own cosine
    over 2 epochs from Muon's lr; the SGD groups the run's MultiStepLR; TensorBoard's tags
    are each group's own optimizer's."""
    filters = {
        "name": "filters", "params": ["features.*.weight"],
        "optimizer": {"class_path": "groupwise.optim.Muon", "init_args": {"lr": 0.02}},
        "schedule": {"shape": "cosine", "epochs": 2},
    }  # fmt: skip
    rest = {"name": "rest", "params": ["*"]}
    args = [
        "fit", "--config", LENET, *SCHEDULE, "--model.param_groups", json.dumps([filters, rest]),
        RECORD, *quick(data_dir, tmp_path),
    ]  # fmt: skip
    cli = run(args)
    (recorder,) = [c for c in cli.trainer.callbacks if isinstance(c, RecordLrs)]
    cosine = [0.02 * (1 + math.cos(math.pi * s / 6)) / 2 for s in range(6)] + [0.0] * 3
    assert [recorder.lrs[s]["filters"] for s in range(9)] == pytest.approx(cosine, abs=1e-15)
    assert [recorder.lrs[s]["rest"] for s in range(9)] == [0.01] * 3 + [0.005] * 3 + [0.0025] * 3
    events = EventAccumulator(str(Path(cli.trainer.log_dir)))
    events.Reload()
    assert {"lr-Muon/filters", "lr-SGD/rest"} <= set(events.Tags()["scalars"])


def test_ddp_ranks_follow_the_same_group_schedule_past_its_end(data_dir, tmp_path):
    """Two CPU processes under plain `ddp` (batches of 10 per rank: 3 steps per epoch):
    every rank's lrs are the same at every step, and the run goes on past the end of a
    `freeze_at_end` schedule: under DDP the group keeps its gradient at lr 0 (a parameter
    that stopped requiring a gradient after DDP wrapped the net stopped plain `ddp` with
    DDP's unused-parameter error at the first step after the end)."""
    spec = {"class_path": "fault_injection.RecordGroupLRs", "init_args": {"out": str(tmp_path)}}
    args = [
        *RECIPE, *quick(data_dir, tmp_path, "--data.batch_size", "10"),
        "--trainer.strategy", "ddp", "--trainer.devices", "2",
        f"--trainer.callbacks+={json.dumps(spec)}",
    ]  # fmt: skip
    done = groupwise("fit", *args)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    assert [s["features"] for s in ranks[0]] == [features_lr(s) for s in range(STEPS)]

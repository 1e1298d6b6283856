"""A schedule per named group (``schedule:`` in a group rule), through real ``Trainer`` fits.

In-process fits of a conv filter, a batch norm and a head (``conv_head_net.Net``) on 8
random images in batches of 2: 4 optimizer steps per epoch. The group ``filters`` has its
own schedule; ``norm`` and ``head`` follow the run's ``MultiStepLR`` (x0.5 at its first
milestone). Every lr is read from the optimizer right before each optimizer step.
"""

import functools
import json
import math
import warnings

import pytest
import torch
from cli_run import LENET
from conv_head_net import Net
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch import Callback, Trainer
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, TensorDataset

from groupwise.callbacks import FreezeGroups
from groupwise.classifier import Classifier
from groupwise.errors import ConfigError
from groupwise.optim.param_groups import describe_optimizer
from groupwise.plan import configure, load, lr_schedule

PEAK, RUN_LR = 0.04, 0.1  # the filters' lr (the curve's peak), the optimizer's lr
IMAGES, BATCH = 8, 2  # 4 batches per epoch


class Record(Callback):
    """Each optimizer step's lr of every group, and which parameters get a gradient."""

    def __init__(self) -> None:
        self.lrs: list[dict[str, float]] = []
        self.no_grad: list[dict[str, bool]] = []  # group -> every parameter's grad is None
        self.requires_grad: list[dict[str, bool]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        groups = optimizer.param_groups
        self.lrs.append({g["name"]: g["lr"] for g in groups})
        self.no_grad.append({g["name"]: all(p.grad is None for p in g["params"]) for g in groups})
        self.requires_grad.append(
            {g["name"]: all(p.requires_grad for p in g["params"]) for g in groups}
        )


def rules(schedule: dict | None) -> list[dict]:
    filters = {"name": "filters", "params": ["conv.weight"], "lr": PEAK}
    if schedule is not None:
        filters["schedule"] = schedule
    return [filters, {"name": "norm", "modules": ["norm"]}, {"name": "head", "modules": ["head"]}]


def model_of(schedule: dict | None, milestones=(1,), interval: str = "epoch") -> Classifier:
    return Classifier(
        Net(),
        optimizer=functools.partial(torch.optim.SGD, lr=RUN_LR, momentum=0.9),
        scheduler=functools.partial(lr_scheduler.MultiStepLR, milestones=list(milestones)),
        scheduler_interval=interval,
        param_groups=rules(schedule),
        num_classes=2,
    )


def fit(
    model: Classifier, epochs: int = 3, accumulate: int = 1, validate: bool = False, **trainer_args
) -> Record:
    """``model`` fitted on the 8 images (and validated on them each epoch, ``validate``)."""
    torch.manual_seed(0)
    images, labels = torch.randn(IMAGES, 3, 5, 5), torch.randint(0, 2, (IMAGES,))
    record = Record()
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        accumulate_grad_batches=accumulate, callbacks=[*trainer_args.pop("callbacks", []), record],
        **trainer_args,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")  # its remarks on the tiny data
        loader = DataLoader(TensorDataset(images, labels), batch_size=BATCH)
        trainer.fit(model, loader, loader if validate else None)
    return record


def factor(shape: str, length: int, step: int, warmup=0.0, start=1.0, end=0.0) -> float:
    """The documented curve, written out: warm-up from 0, then linear / cosine / flat."""
    warm = round(warmup * length) if shape.startswith("warmup_") else 0
    if step >= length:
        return end
    if step < warm:
        return start * step / warm
    done = (step - warm) / (length - warm)
    return {
        "constant": start,
        "linear": start + (end - start) * done,
        "cosine": end + (start - end) * (1 + math.cos(math.pi * done)) / 2,
    }[shape.removeprefix("warmup_")]


def test_a_group_with_its_own_linear_3_epoch_schedule_beside_the_run_s():
    """airbench94's whitening bias: lr x (1 - s / L) over 3 epochs (L = 12 steps), 0 from
    then on; the other groups halve at the run's epoch milestone, as without it."""
    record = fit(model_of({"shape": "linear", "epochs": 3}, milestones=(2,)), epochs=4)
    assert [lrs["filters"] for lrs in record.lrs] == [
        PEAK * (1 - s / 12) if s < 12 else 0.0 for s in range(16)
    ]
    for name in ("norm", "head"):
        assert [lrs[name] for lrs in record.lrs] == [RUN_LR] * 8 + [RUN_LR * 0.1] * 8


def test_freeze_at_end_computes_no_gradient_from_the_end_on():
    record = fit(model_of({"shape": "linear", "steps": 6, "freeze_at_end": True}), epochs=3)
    assert [g["filters"] for g in record.no_grad] == [False] * 6 + [True] * 6
    assert [g["filters"] for g in record.requires_grad] == [True] * 6 + [False] * 6
    assert not any(g["norm"] or g["head"] for g in record.no_grad)


def test_frozen_weights_stay_as_they_were_at_the_end():
    model = model_of({"shape": "cosine", "steps": 5, "freeze_at_end": True})

    class Weights(Callback):
        seen: list[torch.Tensor] = []

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.seen.append(pl_module.net.conv.weight.detach().clone())

    weights = Weights()
    fit(model, epochs=3, callbacks=[weights])
    after = weights.seen  # after steps 1..12
    assert not torch.equal(after[3], after[4])  # step 4 (index 4) trains at a small lr
    assert all(torch.equal(after[4], later) for later in after[5:])  # steps 5.. frozen


def test_freeze_groups_keeps_a_group_on_its_own_schedule_from_updating_while_its_lr_runs():
    """FreezeGroups drops the group's gradients in its frozen epoch; the group's own
    schedule steps all along, as the run's scheduler does for a frozen group."""
    spec = {"shape": "linear", "epochs": 2, "freeze_at_end": True}
    record = fit(model_of(spec), epochs=3, callbacks=[FreezeGroups({"filters": 1})])
    assert [g["filters"] for g in record.no_grad] == [True] * 4 + [False] * 4 + [True] * 4
    assert [lrs["filters"] for lrs in record.lrs] == [
        PEAK * (1 - s / 8) if s < 8 else 0.0 for s in range(12)
    ]


@pytest.mark.filterwarnings("ignore:parameter group 'filters'")
def test_a_parameter_frozen_by_someone_else_stays_frozen_while_its_group_s_curve_runs():
    """freeze_at_end undoes only its own freezing: a filter frozen at epoch 1 by the user's
    own callback (``requires_grad=False``, as Lightning's ``BaseFinetuning`` freezes) stays
    frozen through the steps of its group's unfinished curve, and its weights unchanged."""

    class FreezeConvAtEpoch1(Callback):
        seen: list[torch.Tensor] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                pl_module.net.conv.weight.requires_grad_(False)

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            self.seen.append(pl_module.net.conv.weight.detach().clone())

    spec = {"shape": "linear", "epochs": 3, "freeze_at_end": True}
    freezer = FreezeConvAtEpoch1()
    record = fit(model_of(spec), epochs=2, callbacks=[freezer])
    assert [g["filters"] for g in record.requires_grad] == [True] * 4 + [False] * 4
    assert [g["filters"] for g in record.no_grad] == [False] * 4 + [True] * 4
    assert all(torch.equal(freezer.seen[3], later) for later in freezer.seen[4:])


def test_reduce_lr_on_plateau_beside_a_group_schedule_reduces_only_the_other_groups():
    """The run's ReduceLROnPlateau, stepped with val/loss at each epoch end, halves the
    groups without a schedule of their own after each epoch without improvement (here
    every epoch after the first: an improvement would have to exceed 1e9); ``filters``
    follows its own curve, untouched by the plateau."""
    plateau = functools.partial(
        lr_scheduler.ReduceLROnPlateau, mode="max", factor=0.5, patience=0,
        threshold=1e9, threshold_mode="abs",
    )  # fmt: skip
    model = model_of({"shape": "linear", "epochs": 4})
    model.scheduler = plateau
    record = fit(model, epochs=4, validate=True)
    assert [lrs["filters"] for lrs in record.lrs] == [PEAK * (1 - s / 16) for s in range(16)]
    for name in ("norm", "head"):
        assert [lrs[name] for lrs in record.lrs] == [RUN_LR] * 8 + [RUN_LR / 2] * 4 + [
            RUN_LR / 4
        ] * 4


SHAPES = st.sampled_from(["linear", "cosine", "constant", "warmup_linear", "warmup_cosine"])


@st.composite
def schedules(draw) -> dict:
    shape = draw(SHAPES)
    spec = {"shape": shape}
    if draw(st.booleans()):
        spec["epochs"] = draw(st.integers(1, 3))
    else:
        spec["steps"] = draw(st.integers(2, 14))
    if shape.startswith("warmup_"):
        spec["warmup"] = draw(st.sampled_from([0.25, 0.5]))
    spec["start_factor"] = draw(st.sampled_from([1.0, 0.5]))
    spec["end_factor"] = draw(st.sampled_from([0.0, 0.1]))
    return spec


@settings(max_examples=6, deadline=None)
@given(schedules(), st.sampled_from(["epoch", "step"]), st.sampled_from([1, 2]))
def test_every_group_s_lr_at_every_step_is_its_curve_or_the_run_s(spec, interval, accumulate):
    """Over generated shapes, lengths (epochs or optimizer steps), the run's scheduler
    interval and gradient accumulation: the scheduled group's lr at optimizer step s is its
    peak times its curve at s (steps are optimizer steps, whatever the interval); the other
    groups' are the run's MultiStepLR's (x0.1 from its milestone 1: epoch 1, or step 1)."""
    per_epoch = IMAGES // BATCH // accumulate
    length = spec.get("steps") or spec["epochs"] * per_epoch
    warmup = spec.get("warmup", 0.0)
    if spec["shape"].startswith("warmup_") and round(warmup * length) >= length:
        return  # refused: the warm-up would take the whole length (tested below)
    record = fit(model_of(spec, interval=interval), epochs=3, accumulate=accumulate)
    assert len(record.lrs) == 3 * per_epoch
    for step, lrs in enumerate(record.lrs):
        expected = PEAK * factor(
            spec["shape"], length, step, warmup, spec["start_factor"], spec["end_factor"]
        )
        assert lrs["filters"] == pytest.approx(expected, rel=1e-12, abs=1e-15), step
        unit = step // per_epoch if interval == "epoch" else step
        assert lrs["norm"] == lrs["head"] == (RUN_LR if unit < 1 else RUN_LR * 0.1)


def test_a_schedule_longer_than_the_run_is_warned_naming_both_lengths():
    with pytest.warns(UserWarning, match=r"'filters': its schedule is 20 optimizer steps long, "
                      r"but the run has 12: it never reaches its end"):  # fmt: skip
        record = fit(model_of({"shape": "linear", "steps": 20}), epochs=3)
    assert record.lrs[-1]["filters"] == PEAK * (1 - 11 / 20)


def test_a_warm_up_taking_the_whole_length_is_refused():
    with pytest.raises(ConfigError, match=r"'filters': schedule warmup 0.9 of 2 steps is 2 steps"):
        fit(model_of({"shape": "warmup_linear", "steps": 2, "warmup": 0.9}))


def test_the_run_s_scheduler_with_every_group_scheduled_is_refused():
    model = model_of({"shape": "linear", "steps": 4})
    model.param_groups = [{"name": "all", "params": ["*"], "schedule": {"shape": "constant",
                           "steps": 4}}]  # fmt: skip
    with pytest.raises(ConfigError, match="every parameter group has a schedule of its own"):
        model.build_scheduler(model.build_optimizer(), 12)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ({"shape": "linear", "epoch": 3}, r"unknown keys 'epoch' \(did you mean 'epochs'\?\)"),
        ({"shape": "linaer", "epochs": 3}, r"shape must be one of .* got 'linaer' \(did you"),
        ({"shape": "linear", "epochs": 3, "steps": 9}, "exactly one of epochs / steps"),
        ({"shape": "linear"}, "exactly one of epochs / steps .* got neither"),
        ({"shape": "linear", "epochs": 0}, "epochs must be a whole number >= 1, got 0"),
        ({"shape": "linear", "steps": 2.5}, "steps must be a whole number >= 1, got 2.5"),
        ({"shape": "warmup_cosine", "steps": 9}, "needs warmup, .* in \\(0, 1\\); got None"),
        ({"shape": "linear", "steps": 9, "warmup": 0.1}, "warmup is for the shapes warmup_"),
        ({"shape": "cosine", "steps": 9, "end_factor": -1}, "end_factor must be a number >= 0"),
        (
            {"shape": "linear", "steps": 9, "end_factor": 0.1, "freeze_at_end": True},
            "freeze_at_end .* but end_factor is 0.1: set end_factor: 0",
        ),
        ("linear", r" must be a mapping such as \{shape: linear, epochs: 3\}"),
    ],
)
def test_a_bad_schedule_is_one_error_naming_the_group_and_what_is_valid(schedule, message):
    with pytest.raises(ConfigError, match=r"parameter group 'filters': schedule.*" + message):
        model_of(schedule).build_optimizer()


def test_the_group_table_shows_each_group_s_schedule():
    spec = {"shape": "warmup_cosine", "epochs": 3, "warmup": 0.2, "freeze_at_end": True}
    rows = describe_optimizer(model_of(spec).build_optimizer())
    assert [row["schedule"] for row in rows] == [
        "warmup_cosine 1->0 after 0.2 warm-up over 3 epochs, then frozen",
        "model.scheduler",
        "model.scheduler",
    ]
    assert "schedule" not in describe_optimizer(model_of(None).build_optimizer())[0]


def test_the_plan_follows_each_group_s_own_schedule_per_optimizer_step(tmp_path):
    """configs/lenet.yaml without data (CIFAR-10's 45,000 training images in batches of
    128: 352 steps per epoch) with its features on a linear 3-epoch schedule: per step, the
    features fall to 0 at step 1056; the classifier's MultiStepLR acts at epoch 10."""
    features = {"name": "features", "modules": ["features"],
                "schedule": {"shape": "linear", "epochs": 3}}  # fmt: skip
    classifier = {"name": "classifier", "modules": ["classifier"], "lr_scale": 10.0}
    groups = json.dumps([features, classifier])
    args = ["--config", LENET, "--data.data_dir", str(tmp_path), "--model.param_groups", groups]
    setup = configure(load(args))
    assert (setup.steps_per_epoch, setup.frequency) == (352, 352)
    planned = lr_schedule(
        setup.optimizer, setup.scheduler, 11 * 352, setup.frequency, setup.group_schedules
    )
    assert planned["features"][:1058] == [0.005 * (1 - s / 1056) for s in range(1056)] + [0.0] * 2
    assert planned["classifier"][3519:3521] == [0.05, 0.05 * 0.1]

"""Schedules keep each group's configured lr and momentum relation, as a property.

Over generated group rules (an optimizer per group among SGD, AdamW and Muon, ``lr_scale``,
a rule's own ``lr``, per-group momenta or betas), a default optimizer (SGD or AdamW), an
``lr_multiplier`` and every scheduler of ``torch.optim.lr_scheduler`` that is configured
alone on several groups, plus the project's own (``WarmupLinearLR``, ``CosineAnnealingLR``),
with generated arguments: the optimizer and scheduler are the ones the ``Classifier``'s
``configure_optimizers`` returns to Lightning, stepped as Lightning steps them. At every
step, either

- every group's lr is its configured lr times one factor shared by all groups
  (``lr_g(t) * lr_h == lr_h(t) * lr_g``), and
- every group's momentum (``betas[0]`` for AdamW) is its configured one, or, while a
  scheduler cycles momentum (``OneCycleLR``, ``CyclicLR`` with ``cycle_momentum``), its
  configured one times one factor shared by all groups (all equal when all were equal),
  with no momentum key added that the group's optimizer does not read;

or building the run is one ``UserError`` (one line), and only for a cycling scheduler.

Not covered: ``SequentialLR`` and ``ChainedScheduler`` (they take schedulers already built
on the optimizer, which no config can give), floors that are absolute by torch's design
(``CosineAnnealingLR``'s and ``CosineAnnealingWarmRestarts``' ``eta_min``,
``ReduceLROnPlateau``'s ``min_lr`` and ``eps``: generated as 0), and momentum bounds given
as lists (used as given).
"""

import functools
import warnings

import pytest
import torch
from conv_head_net import Net
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch import Trainer
from torch.optim import lr_scheduler

from groupwise.classifier import Classifier
from groupwise.errors import UserError
from groupwise.optim import CosineAnnealingLR, WarmupLinearLR

EPOCHS = 8  # scheduler steps per example (scheduler_interval: epoch)


@functools.cache
def trainer() -> Trainer:
    """What configure_optimizers reads of the trainer: the run's length, in epochs."""
    return Trainer(
        max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip


LRS = st.sampled_from([0.001, 0.01, 0.03, 0.1, 0.5])
MOMENTA = st.sampled_from([0.0, 0.5, 0.8, 0.9, 0.95])


@st.composite
def optimizer_args(draw, name: str) -> dict:
    """Init args of an optimizer: its lr and momentum (or betas)."""
    args = {"lr": draw(LRS)}
    if name == "AdamW":
        args["betas"] = (draw(st.sampled_from([0.8, 0.9, 0.95])), 0.999)
    else:
        args["momentum"] = draw(MOMENTA if name == "SGD" else MOMENTA.filter(bool))
    return args


CLASSES = {
    "SGD": "torch.optim.SGD",
    "AdamW": "torch.optim.AdamW",
    "Muon": "groupwise.optim.Muon",
}


@st.composite
def rule(draw, name: str, select: dict, optimizers: list[str], default: str) -> dict:
    """A group rule: maybe its own optimizer, maybe an lr of its own (scaled or absolute),
    maybe its own momentum (or betas) for the optimizer that steps it."""
    out = {"name": name, **select}
    own = draw(st.sampled_from([None, *optimizers]))
    if own is not None:
        init = draw(optimizer_args(own))
        out["optimizer"] = {"class_path": CLASSES[own], "init_args": init}
    lr = draw(st.sampled_from(["none", "scale", "absolute"]))
    if lr == "scale":
        out["lr_scale"] = draw(st.sampled_from([0.1, 0.5, 4.0, 10.0]))
    elif lr == "absolute":
        out["lr"] = draw(LRS)
    if draw(st.booleans()):
        if (own or default) == "AdamW":
            out["betas"] = (draw(st.sampled_from([0.8, 0.9, 0.95])), 0.999)
        else:
            out["momentum"] = draw(MOMENTA if (own or default) == "SGD" else MOMENTA.filter(bool))
    return out


def lam(epoch: int) -> float:
    return 0.8**epoch


def constant_factor(epoch: int) -> float:
    return 0.9


FRACTIONS = st.sampled_from([0.1, 0.25, 0.5, 0.9])
FACTORS = st.sampled_from([0.1, 0.5, 0.9])
CYCLE_MOMENTUM = {
    "cycle_momentum": st.booleans(),
    "base_momentum": st.sampled_from([0.5, 0.8, 0.85]),
    "max_momentum": st.sampled_from([0.9, 0.95]),
}
SCHEDULERS = {
    lr_scheduler.LambdaLR: {"lr_lambda": st.just(lam)},
    lr_scheduler.MultiplicativeLR: {"lr_lambda": st.just(constant_factor)},
    lr_scheduler.StepLR: {"step_size": st.integers(1, 3), "gamma": FACTORS},
    lr_scheduler.MultiStepLR: {
        "milestones": st.lists(st.integers(1, EPOCHS - 1), min_size=1, unique=True).map(sorted),
        "gamma": FACTORS,
    },
    lr_scheduler.ConstantLR: {"factor": FACTORS, "total_iters": st.integers(1, EPOCHS)},
    lr_scheduler.LinearLR: {"start_factor": FRACTIONS, "end_factor": st.sampled_from([0.5, 1.0])},
    lr_scheduler.ExponentialLR: {"gamma": FACTORS},
    lr_scheduler.PolynomialLR: {"total_iters": st.none(), "power": st.sampled_from([0.5, 1, 2])},
    lr_scheduler.CosineAnnealingLR: {"T_max": st.integers(2, EPOCHS)},
    lr_scheduler.CosineAnnealingWarmRestarts: {
        "T_0": st.integers(1, 4),
        "T_mult": st.integers(1, 2),
    },
    # eps: torch skips a reduction smaller than eps (1e-8), so a group that reaches ~1e-8
    # stops there while the others go on: an absolute floor, like min_lr
    lr_scheduler.ReduceLROnPlateau: {
        "factor": FACTORS,
        "patience": st.integers(0, 2),
        "eps": st.just(0.0),
    },
    lr_scheduler.CyclicLR: {
        "base_lr": st.sampled_from([0.001, 0.01]),
        "max_lr": st.sampled_from([0.1, 1.0]),
        "step_size_up": st.integers(1, 4),
        "mode": st.sampled_from(["triangular", "triangular2", "exp_range"]),
        **CYCLE_MOMENTUM,
    },
    lr_scheduler.OneCycleLR: {
        "max_lr": st.sampled_from([0.1, 1.0]),
        "total_steps": st.none(),
        "pct_start": FRACTIONS,
        "three_phase": st.booleans(),
        "anneal_strategy": st.sampled_from(["cos", "linear"]),
        **CYCLE_MOMENTUM,
    },
    WarmupLinearLR: {"warmup_fraction": st.sampled_from([0.0, 0.25]), "start_factor": FRACTIONS},
    CosineAnnealingLR: {"T_max": st.none()},
}
CYCLING = (lr_scheduler.OneCycleLR, lr_scheduler.CyclicLR)


@st.composite
def configs(draw) -> dict:
    default = draw(st.sampled_from(["SGD", "AdamW"]))
    rules = [
        draw(rule("filters", {"params": ["conv.weight"]}, ["SGD", "AdamW", "Muon"], default)),
        draw(rule("norm", {"modules": ["norm"]}, ["SGD", "AdamW"], default)),
    ]
    cls = draw(st.sampled_from(list(SCHEDULERS)))
    arguments = draw(st.fixed_dictionaries(SCHEDULERS[cls]))
    return {
        "default": (default, draw(optimizer_args(default))),
        "rules": rules,
        "scheduler": (cls, arguments),
        "lr_multiplier": draw(st.sampled_from([1.0, 0.5, 3.0])),
    }


def model_of(config: dict) -> Classifier:
    name, args = config["default"]
    cls, arguments = config["scheduler"]
    optimizer_class = {"SGD": torch.optim.SGD, "AdamW": torch.optim.AdamW}[name]
    model = Classifier(
        Net(),
        optimizer=functools.partial(optimizer_class, **args),
        scheduler=functools.partial(cls, **arguments),
        scheduler_interval="epoch",
        param_groups=config["rules"],
        num_classes=2,
        lr_multiplier=config["lr_multiplier"],
    )
    model.trainer = trainer()
    return model


def run_schedule(config: dict) -> tuple[list[dict], list[list[dict]]] | UserError:
    """The groups as configured, and each group's options before each of the steps, with
    the optimizer and scheduler of ``configure_optimizers`` (or the error building them)."""
    model = model_of(config)
    configured = [dict(group) for group in model.build_optimizer().param_groups]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a length or interval remark, not the subject here
        try:
            built = model.configure_optimizers()
        except UserError as error:
            return error
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    torch.manual_seed(0)
    seen = []
    for _ in range(EPOCHS):
        seen.append([dict(group) for group in optimizer.param_groups])
        for param in model.parameters():
            param.grad = 0.01 * torch.randn_like(param)
        optimizer.step()
        if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
            scheduler.step(1.0)  # no improvement: it reduces after `patience` epochs
        else:
            scheduler.step()
    return configured, seen


def momentum(group: dict) -> float:
    """The momentum the group's optimizer reads: AdamW's beta1, else its momentum."""
    return group["betas"][0] if "betas" in group else group["momentum"]


def same_factor(values: list[float], configured: list[float]) -> bool:
    """Whether ``values`` are ``configured`` times one factor shared by all."""
    return all(
        v * c == pytest.approx(w * b, rel=1e-6, abs=1e-15)
        for v, b in zip(values, configured, strict=True)
        for w, c in zip(values, configured, strict=True)
    )


def check_relation(config: dict) -> None:
    result = run_schedule(config)
    cls, arguments = config["scheduler"]
    cycling = issubclass(cls, CYCLING) and arguments.get("cycle_momentum", True)
    if isinstance(result, UserError):
        assert cycling, f"{cls.__name__} refused: {result}"
        assert "\n" not in str(result)
        return
    configured, seen = result
    lrs = [group["lr"] for group in configured]
    momenta = [momentum(group) for group in configured]
    for step, groups in enumerate(seen):
        now = [group["lr"] for group in groups]
        assert same_factor(now, lrs), f"step {step}: lrs {now}, configured {lrs}"
        moments = [momentum(group) for group in groups]
        if not cycling:
            assert moments == momenta, f"step {step}: momenta {moments}, configured {momenta}"
            continue
        for before, group in zip(configured, groups, strict=True):
            assert ("momentum" in group) == ("momentum" in before), group["name"]
            assert ("betas" in group) == ("betas" in before), group["name"]
        if len(set(momenta)) == 1:
            assert len(set(moments)) == 1, f"step {step}: momenta {moments}"
        else:
            assert same_factor(moments, momenta), f"step {step}: {moments}, conf. {momenta}"


@settings(max_examples=150, deadline=None)
@given(configs())
def test_every_schedule_keeps_each_group_s_lr_and_momentum_relation(config):
    check_relation(config)


def test_found_cyclic_lr_keeps_a_group_without_momentum_at_zero():
    """Found by the property on the old code: CyclicLR gave every group one momentum curve,
    so a group configured without momentum (norm, 0) cycled from 0.9 like the others."""
    config = {
        "default": ("SGD", {"lr": 0.001, "momentum": 0.5}),
        "rules": [
            {"name": "filters", "params": ["conv.weight"]},
            {"name": "norm", "modules": ["norm"], "momentum": 0.0},
        ],
        "scheduler": (
            lr_scheduler.CyclicLR,
            {
                "base_lr": 0.001,
                "max_lr": 0.1,
                "step_size_up": 1,
                "base_momentum": 0.5,
                "max_momentum": 0.9,
            },
        ),  # fmt: skip
        "lr_multiplier": 1.0,
    }
    _, seen = run_schedule(config)
    # step_size_up 1: the momentum alternates between max_momentum and base_momentum
    expected = [0.9, 0.5] * (EPOCHS // 2)
    assert [momentum(groups[0]) for groups in seen] == pytest.approx(expected)
    assert [momentum(groups[1]) for groups in seen] == [0.0] * EPOCHS
    assert [momentum(groups[2]) for groups in seen] == pytest.approx(expected)

"""FreezeGroups and set_group_lr: named groups stay named, the optimizer stays the same
object, frozen groups get no update, and under DDP the ranks stay identical after the
unfreeze."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_run import LENET, f32, groupwise, load, quick, scalars
from lightning.pytorch import Callback
from torch import nn

from groupwise.callbacks.finetune import FreezeGroups, set_group_lr
from groupwise.cli import run
from groupwise.nets import LeNet5
from groupwise.optim.param_groups import build_param_groups

LR, MOMENTUM, WD = 0.005, 0.9, 5.0e-4  # configs/lenet.yaml; classifier at 10x LR
EPOCHS = ["--trainer.max_epochs", "3", "--model.scheduler.init_args.milestones", "[1, 2]"]


def callback_arg(class_path: str, **init_args) -> str:
    return f"--trainer.callbacks+={json.dumps({'class_path': class_path, 'init_args': init_args})}"


def freeze_arg(**frozen: int) -> str:
    return callback_arg("groupwise.callbacks.FreezeGroups", frozen=frozen)


def clone(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.detach().clone()


class RecordSteps(Callback):
    """In-process record of every optimizer step: the optimizer object and its group names,
    each parameter's gradient as the optimizer sees it (after the callbacks listed before
    this one), its value and momentum buffer before and after the step; the weights at
    train start and at the end of each epoch. Keys are the net's parameter names."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.epochs: dict[int, dict[str, torch.Tensor]] = {}

    def weights(self, pl_module) -> dict[str, torch.Tensor]:
        return {name: clone(p) for name, p in pl_module.net.named_parameters()}

    def buffers(self, optimizer, pl_module) -> dict[str, torch.Tensor | None]:
        return {
            name: clone(optimizer.state.get(p, {}).get("momentum_buffer"))
            for name, p in pl_module.net.named_parameters()
        }

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = self.weights(pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        (opt,) = trainer.optimizers
        self.steps.append(
            {
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "optimizer": opt,
                "groups": [group["name"] for group in opt.param_groups],
                "lrs": {group["name"]: group["lr"] for group in opt.param_groups},
                "grads": {name: clone(p.grad) for name, p in pl_module.net.named_parameters()},
                "before": self.weights(pl_module),
                "buffers_before": self.buffers(opt, pl_module),
            }
        )

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        (opt,) = trainer.optimizers
        self.steps[-1]["after"] = self.weights(pl_module)
        self.steps[-1]["buffers_after"] = self.buffers(opt, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs[trainer.current_epoch] = self.weights(pl_module)


def recorder(cli) -> RecordSteps:
    (found,) = [c for c in cli.trainer.callbacks if isinstance(c, RecordSteps)]
    return found


def names(prefix: str) -> list[str]:
    return [name for name, _ in LeNet5().named_parameters() if name.startswith(prefix)]


FEATURES, CLASSIFIER = names("features."), names("classifier.")


@pytest.fixture(scope="module")
def frozen_fit(data_dir, tmp_path_factory):
    """LeNet, 3 epochs of 3 steps, lr x0.1 at epochs 1 and 2, `features` frozen 1 epoch."""
    root = tmp_path_factory.mktemp("frozen")
    args = quick(
        data_dir, root, *EPOCHS, freeze_arg(features=1), callback_arg("test_finetune.RecordSteps")
    )
    cli = run(["fit", "--config", LENET, *args])
    return cli, recorder(cli)


def test_features_are_bit_identical_through_epoch_0_and_train_from_epoch_1(frozen_fit):
    cli, rec = frozen_fit
    assert [s["step"] for s in rec.steps] == list(range(9))
    for s in rec.steps[:3]:
        assert all(s["grads"][n] is None for n in FEATURES)  # dropped before the step
        for n in FEATURES:
            assert torch.equal(s["after"][n], rec.start[n]), (s["step"], n)
    for n in FEATURES:
        assert torch.equal(rec.epochs[0][n], rec.start[n]), n
        assert not torch.equal(rec.epochs[1][n], rec.epochs[0][n]), n
        assert not torch.equal(rec.epochs[2][n], rec.epochs[1][n]), n
    for s in rec.steps[3:]:  # every step from the unfreeze on moves every features tensor
        for n in FEATURES:
            assert s["grads"][n] is not None
            assert not torch.equal(s["after"][n], s["before"][n]), (s["step"], n)


def test_classifier_trains_from_the_first_step(frozen_fit):
    _, rec = frozen_fit
    for s in rec.steps:
        for n in CLASSIFIER:
            assert not torch.equal(s["after"][n], s["before"][n]), (s["step"], n)


def test_the_optimizer_and_its_named_groups_are_never_rebuilt(frozen_fit):
    cli, rec = frozen_fit
    (optimizer,) = cli.trainer.optimizers
    assert all(s["optimizer"] is optimizer for s in rec.steps)
    assert all(s["groups"] == ["features", "classifier"] for s in rec.steps)
    assert [group["name"] for group in optimizer.param_groups] == ["features", "classifier"]
    # the groups hold the net's parameters themselves (identity), each in its own group
    net = cli.model.net
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [
        id(p) for p in net.features.parameters()
    ]
    assert [id(p) for p in optimizer.param_groups[1]["params"]] == [
        id(p) for p in net.classifier.parameters()
    ]
    assert all(p.requires_grad for p in net.parameters())


def test_momentum_buffers_start_at_the_unfreeze_and_the_classifiers_carry_on(frozen_fit):
    _, rec = frozen_fit
    for s in rec.steps[:3]:
        assert all(s["buffers_after"][n] is None for n in FEATURES)  # no state while frozen
    unfreeze = rec.steps[3]
    lr_features = LR * 0.1  # the scheduler's lr for epoch 1 (milestone 1)
    assert unfreeze["lrs"] == pytest.approx({"features": lr_features, "classifier": 10 * LR * 0.1})
    for n in FEATURES:
        assert unfreeze["buffers_before"][n] is None
        # SGD's first buffer is the gradient plus weight decay; the step uses the group's lr
        expected = unfreeze["grads"][n] + WD * unfreeze["before"][n]
        torch.testing.assert_close(unfreeze["buffers_after"][n], expected)
        torch.testing.assert_close(
            unfreeze["after"][n], unfreeze["before"][n] - lr_features * expected
        )
    for previous, s in zip(rec.steps, rec.steps[1:], strict=False):
        for n in CLASSIFIER:
            # the same buffer across steps (no reset at the unfreeze), updated by SGD's rule
            assert torch.equal(s["buffers_before"][n], previous["buffers_after"][n])
            expected = MOMENTUM * s["buffers_before"][n] + s["grads"][n] + WD * s["before"][n]
            torch.testing.assert_close(s["buffers_after"][n], expected)


def test_each_groups_lr_per_epoch_is_the_scheduler_s(frozen_fit):
    cli, _ = frozen_fit
    logged = scalars(Path(cli.trainer.log_dir))
    lrs = [LR, LR * 0.1, LR * 0.01]
    assert logged["lr-SGD/features"] == list(zip([0, 3, 6], f32(lrs), strict=True))
    assert logged["lr-SGD/classifier"] == list(
        zip([0, 3, 6], f32([10 * lr for lr in lrs]), strict=True)
    )
    assert not [tag for tag in logged if tag.startswith("lr-SGD/pg")]


def test_the_no_decay_half_follows_its_group(data_dir, tmp_path):
    args = quick(
        data_dir,
        tmp_path,
        "--trainer.max_epochs", "2",
        "--model.no_decay_split", "true",
        freeze_arg(features=1),
        callback_arg("test_finetune.RecordSteps"),
    )  # fmt: skip
    cli = run(["fit", "--config", LENET, *args])
    rec = recorder(cli)
    groups = ["features", "features.no_decay", "classifier", "classifier.no_decay"]
    assert all(s["groups"] == groups for s in rec.steps)
    biases = [n for n in FEATURES if n.endswith(".bias")]
    assert biases == ["features.0.bias", "features.3.bias"]
    (optimizer,) = cli.trainer.optimizers
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {
        id(p) for n, p in cli.model.net.named_parameters() if n in biases
    }
    for n in FEATURES:  # weights and biases alike: frozen in epoch 0, trained in epoch 1
        assert torch.equal(rec.epochs[0][n], rec.start[n]), n
        assert not torch.equal(rec.epochs[1][n], rec.epochs[0][n]), n
    for n in CLASSIFIER:
        assert not torch.equal(rec.steps[0]["after"][n], rec.start[n]), n


def test_an_unknown_group_name_names_the_groups_there_are(data_dir, tmp_path):
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "1", freeze_arg(backbone=1))
    with pytest.raises(ValueError, match=r"'backbone'.*\['features', 'classifier'\]"):
        run(["fit", "--config", LENET, *args])


@pytest.mark.parametrize("epochs", [-1, 1.5, True])
def test_epochs_must_be_a_non_negative_integer(epochs):
    with pytest.raises(ValueError, match="features"):
        FreezeGroups({"features": epochs})


# ---- set_group_lr --------------------------------------------------------------------------


def lenet_sgd(no_decay_split: bool = True) -> tuple[nn.Module, torch.optim.SGD]:
    torch.manual_seed(0)
    net = LeNet5()
    defaults = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}
    rules = [
        {"name": "features", "modules": ["features"]},
        {"name": "classifier", "modules": ["classifier"]},
    ]
    groups = build_param_groups(net, rules, defaults, no_decay_split)
    return net, torch.optim.SGD(groups, **defaults)


def sgd_step(net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    optimizer.step()


def test_set_group_lr_edits_param_groups_in_place_and_keeps_the_momentum_buffers():
    net, optimizer = lenet_sgd()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2], gamma=0.1)
    groups = list(optimizer.param_groups)
    for _ in range(2):
        sgd_step(net, optimizer)
    state = {
        p: (s["momentum_buffer"], clone(s["momentum_buffer"])) for p, s in optimizer.state.items()
    }
    assert len(state) == 10  # every parameter has its buffer
    scheduler.step()

    changed = set_group_lr(optimizer, "features", 0.5)

    assert changed == ["features", "features.no_decay"]
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5, 0.1, 0.1]
    assert optimizer.param_groups == groups and all(
        a is b for a, b in zip(optimizer.param_groups, groups, strict=True)
    )
    for p, (buffer, value) in state.items():
        assert optimizer.state[p]["momentum_buffer"] is buffer
        assert torch.equal(buffer, value)
    scheduler.step()  # milestone 2: the chainable MultiStepLR scales the new value
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.05, 0.01, 0.01])
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.1] * 4  # untouched


def test_set_group_lr_of_one_half_and_of_an_unknown_group():
    _, optimizer = lenet_sgd()
    assert set_group_lr(optimizer, "classifier.no_decay", 0.0) == ["classifier.no_decay"]
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.1, 0.1, 0.0]
    with pytest.raises(ValueError, match=r"'head'.*'features', 'features.no_decay'"):
        set_group_lr(optimizer, "head", 0.1)


# ---- BatchNorm -----------------------------------------------------------------------------


def test_train_bn_false_puts_only_the_frozen_groups_norms_in_eval_mode():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4, affine=False),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
    )  # fmt: skip
    rules = [{"name": "stem", "modules": ["0", "1"]}, {"name": "body", "modules": ["3", "4"]}]
    groups = build_param_groups(net, rules, {"lr": 0.1, "weight_decay": 0.0}, True)
    optimizers = [torch.optim.SGD(groups, lr=0.1)]
    trainer = SimpleNamespace(optimizers=optimizers, current_epoch=0, global_step=0, loggers=[])
    for train_bn, expected in ((True, []), (False, [1])):
        callback = FreezeGroups({"stem": 1}, train_bn=train_bn)
        callback.on_fit_start(trainer, None)
        net.train()
        trainer.current_epoch = 0
        callback.on_train_epoch_start(trainer, net)
        assert [i for i, m in enumerate(net) if not m.training] == expected
        trainer.current_epoch = 1  # nothing else puts the model back in train mode
        callback.on_train_epoch_start(trainer, net)
        assert all(m.training for m in net)


TINY_BN_NET = json.dumps(
    {"class_path": "groupwise.nets.FastNet", "init_args": {"widths": [4, 4, 4], "stem_width": 4}}
)
BACKBONE_HEAD = (
    '[{"name": "backbone", "modules": ["backbone"]}, {"name": "head", "modules": ["head"]}]'
)


class RecordNormModes(Callback):
    """In-process record of each batch-norm layer's ``training`` flag at every training
    step, and whether the model as a whole was in train mode, by epoch."""

    def __init__(self) -> None:
        self.modes: dict[int, set[tuple[bool, ...]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        norms = [m for m in pl_module.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(norms) == 7  # the stem and two per stage, all in the backbone group
        modes = tuple(m.training for m in norms)
        self.modes.setdefault(trainer.current_epoch, set()).add(modes)


def fit_recording_norm_modes(data_dir: Path, root: Path, epochs: int, *extra: str) -> dict:
    args = quick(
        data_dir, root,
        "--model.net", TINY_BN_NET,
        "--model.param_groups", BACKBONE_HEAD,
        "--trainer.max_epochs", str(epochs),
        callback_arg("test_finetune.RecordNormModes"),
        *extra,
    )  # fmt: skip
    cli = run(["fit", "--config", LENET, *args])
    (found,) = [c for c in cli.trainer.callbacks if isinstance(c, RecordNormModes)]
    return found.modes


def frozen_bn_arg(epochs: int) -> str:
    return callback_arg(
        "groupwise.callbacks.FreezeGroups", frozen={"backbone": epochs}, train_bn=False
    )


EVAL, TRAIN = {(False,) * 7}, {(True,) * 7}


def test_train_bn_false_norms_train_again_from_the_unfreeze_in_a_real_fit(data_dir, tmp_path):
    """Lightning puts the model in train mode once, not every epoch: the callback itself
    must switch the norms it put in eval mode back at the unfreeze."""
    modes = fit_recording_norm_modes(data_dir, tmp_path, 3, frozen_bn_arg(1))
    assert modes == {0: EVAL, 1: TRAIN, 2: TRAIN}


def test_train_bn_false_norm_modes_after_a_resume_before_and_past_the_unfreeze(data_dir, tmp_path):
    """Frozen for 2 epochs: a run of 1 epoch, resumed (still frozen) to 2, resumed (past the
    unfreeze) to 3: each epoch's norms are as in an uninterrupted run."""
    freeze = frozen_bn_arg(2)
    assert fit_recording_norm_modes(data_dir, tmp_path, 1, freeze) == {0: EVAL}
    resume = ("--ckpt_path", "last")
    assert fit_recording_norm_modes(data_dir, tmp_path, 3, freeze, *resume) == {1: EVAL, 2: TRAIN}
    assert fit_recording_norm_modes(data_dir, tmp_path, 4, freeze, *resume) == {3: TRAIN}


# ---- DDP -----------------------------------------------------------------------------------


class RecordEpochEnds(Callback):
    """Write, per rank, the net's weights at train start and at the end of every epoch to
    ``<out>/epochs<r>.pt``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.record: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.record["start"] = {k: clone(v) for k, v in pl_module.net.state_dict().items()}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        state = {k: clone(v) for k, v in pl_module.net.state_dict().items()}
        self.record[trainer.current_epoch] = state
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out / f"epochs{trainer.global_rank}.pt")


def ddp_fit(data_dir: Path, root: Path, freeze: str) -> dict:
    out = root / "ranks"
    args = quick(
        data_dir,
        root,
        *EPOCHS,
        "--data.batch_size", "10",
        "--trainer.strategy", "ddp",
        "--trainer.devices", "2",
        freeze,
        callback_arg("fault_injection.RecordRank", out=str(out)),
        callback_arg("test_finetune.RecordEpochEnds", out=str(out)),
    )  # fmt: skip
    done = groupwise("fit", "--config", LENET, *args)
    assert done.returncode == 0, done.stderr[-4000:]
    return {
        "final": [load(out / f"rank{r}.pt")["state_dict"] for r in (0, 1)],
        "epochs": [load(out / f"epochs{r}.pt") for r in (0, 1)],
        "scalars": scalars(root / "lightning_logs/version_0"),
    }


@pytest.mark.slow
def test_ddp_ranks_stay_identical_after_the_unfreeze(data_dir, tmp_path):
    ddp = ddp_fit(data_dir, tmp_path, freeze_arg(features=1))
    rank0, rank1 = ddp["final"]
    assert rank0.keys() == rank1.keys()
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    for epochs in ddp["epochs"]:
        for n in FEATURES:
            assert torch.equal(epochs[0][n], epochs["start"][n]), n
            assert not torch.equal(epochs[1][n], epochs[0][n]), n
            assert not torch.equal(epochs[2][n], epochs[1][n]), n
            assert torch.equal(rank0[f"net.{n}"], epochs[2][n])
    assert not [tag for tag in ddp["scalars"] if tag.startswith("lr-SGD/pg")]

"""An optimizer per named group through the real Trainer and CLI: Muon on the filters and
SGD on the rest as one Lightning optimizer, with the schedule, LearningRateMonitor,
GroupStats, the group table, FreezeGroups, resume and DDP.

A small FastNet (widths 4/8/8), 60 training images in batches of 20: 3 steps an epoch.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import yaml
from cli_run import f32, groupwise, load, quick, scalars
from file_snapshot import assert_kept, snapshot
from test_finetune import callback_arg, freeze_arg, recorder
from test_muon import newton_schulz

from groupwise.callbacks.finite_loss import NonFiniteLossError
from groupwise.cli import run
from groupwise.optim import CombinedOptimizer, Muon

MUON = {"lr": 0.2, "momentum": 0.6, "nesterov": True, "weight_decay": 0.0}
SGD_LR, MOMENTUM, WD = 0.05, 0.9, 5e-4
CONFIG = {
    "seed_everything": 0,
    "trainer": {"max_epochs": 3},
    "model": {
        "net": {
            "class_path": "groupwise.nets.FastNet",
            "init_args": {"widths": [4, 8, 8], "stem_width": 4},
        },
        "param_groups": [
            {
                "name": "filters",
                "params": ["*.conv.weight"],
                "optimizer": {"class_path": "groupwise.optim.Muon", "init_args": MUON},
            },
            {"name": "norm", "params": ["*.norm.*"], "lr_scale": 4.0},
        ],
        "optimizer": {
            "class_path": "torch.optim.SGD",
            "init_args": {"lr": SGD_LR, "momentum": MOMENTUM, "weight_decay": WD},
        },
        "scheduler": {
            "class_path": "torch.optim.lr_scheduler.MultiStepLR",
            "init_args": {"milestones": [1, 2], "gamma": 0.5},
        },
    },
}
# the group lrs in epochs 0, 1, 2 (the schedule halves every group's own lr)
LRS = {"filters": [0.2, 0.1, 0.05], "norm": [0.2, 0.1, 0.05], "default": [0.05, 0.025, 0.0125]}


def write_config(root: Path, **changes) -> str:
    config = json.loads(json.dumps(CONFIG))
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node[int(parent)] if isinstance(node, list) else node[parent]
        node[int(key) if isinstance(node, list) else key] = value
    path = root / f"config{len(list(root.glob('config*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def fit(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("muon_fit")
    config = write_config(root)
    cli = run(
        [
            "fit",
            "--config",
            config,
            *quick(data_dir, root, callback_arg("test_finetune.RecordSteps")),
        ]
    )
    return cli, recorder(cli), Path(cli.trainer.log_dir)


def test_lightning_gets_one_optimizer_with_every_group_in_yaml_order(fit):
    cli, rec, _ = fit
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, CombinedOptimizer)
    assert [g["name"] for g in optimizer.param_groups] == ["filters", "norm", "default"]
    assert [type(c) for c in optimizer.group_optimizers] == [Muon, torch.optim.SGD, torch.optim.SGD]
    assert all(s["optimizer"] is optimizer for s in rec.steps)  # never rebuilt
    net = cli.model.net
    filters = {n for n, p in net.named_parameters() if n.endswith(".conv.weight")}
    assert {n for n, p in net.named_parameters() if p.ndim == 4} == filters and len(filters) == 7


def test_each_group_steps_at_its_own_lr_through_the_schedule(fit):
    _, rec, run_dir = fit
    for step in rec.steps:
        assert step["lrs"] == pytest.approx({k: v[step["epoch"]] for k, v in LRS.items()})
    logged = scalars(run_dir)
    for group, lrs in LRS.items():
        # the prefix names the group's own optimizer
        prefix = "lr-Muon" if group == "filters" else "lr-SGD"
        assert logged[f"{prefix}/{group}"] == list(zip([0, 3, 6], f32(lrs), strict=True))
    assert logged["lr-Muon/filters-momentum"] == [(s, f32([0.6])[0]) for s in (0, 3, 6)]
    assert logged["lr-Muon/filters-weight_decay"] == [(s, 0.0) for s in (0, 3, 6)]
    for group in LRS:
        assert f"groups/{group}/update_ratio" in logged and f"groups/{group}/grad_norm" in logged


def test_the_filters_move_by_muon_s_update_and_the_rest_by_sgd_s(fit):
    _, rec, _ = fit
    first = rec.steps[0]  # momentum buffers start at zero: the step follows the gradient
    for name in [n for n in first["grads"] if n.endswith(".conv.weight")]:
        grad = first["grads"][name]
        direction = (first["after"][name] - first["before"][name]) / -0.2
        expected = newton_schulz(grad.reshape(len(grad), -1), 5).reshape(grad.shape)
        torch.testing.assert_close(direction.double(), expected, rtol=0, atol=0.02)
    head = "head.2.weight"
    sgd_change = first["after"][head] - first["before"][head]
    torch.testing.assert_close(
        sgd_change, -SGD_LR * (first["grads"][head] + WD * first["before"][head])
    )


def test_the_group_table_shows_each_group_s_optimizer(fit):
    _, _, run_dir = fit
    table = (run_dir / "param_groups.txt").read_text().splitlines()
    assert table[0].split()[:3] == ["name", "optimizer", "tensors"]
    assert [line.split()[:2] for line in table[2:]] == [
        ["filters", "Muon"], ["norm", "SGD"], ["default", "SGD"]
    ]  # fmt: skip


def test_a_group_s_tags_are_named_after_its_own_optimizer(data_dir, tmp_path):
    config = write_config(
        tmp_path,
        **{"model.param_groups.0.optimizer": "torch.optim.AdamW", "trainer.max_epochs": 1},
    )
    cli = run(["fit", "--config", config, *quick(data_dir, tmp_path)])
    logged = scalars(Path(cli.trainer.log_dir))
    assert sorted(t for t in logged if t.startswith("lr-")) == sorted(
        f"lr-{'AdamW' if g == 'filters' else 'SGD'}/{g}{suffix}"
        for g in LRS
        for suffix in ("", "-momentum", "-weight_decay")
    )
    assert logged["lr-AdamW/filters"] == [(0, f32([1e-3])[0])]  # AdamW's default lr
    assert logged["lr-AdamW/filters-momentum"] == [(0, f32([0.9])[0])]  # betas[0]


def test_frozen_muon_group_is_not_updated_and_its_momentum_starts_at_the_unfreeze(
    data_dir, tmp_path
):
    config = write_config(tmp_path, **{"trainer.max_epochs": 2})
    args = quick(
        data_dir, tmp_path, freeze_arg(filters=1), callback_arg("test_finetune.RecordSteps")
    )
    cli = run(["fit", "--config", config, *args])
    rec = recorder(cli)
    filters = [n for n in rec.start if n.endswith(".conv.weight")]
    for step in rec.steps[:3]:
        for n in filters:
            assert torch.equal(step["after"][n], rec.start[n]) and step["buffers_after"][n] is None
    first = rec.steps[3]  # the first step of epoch 1
    for n in filters:
        assert first["buffers_before"][n] is None
        # the buffer starts from zero at this step: (1 - momentum) * this step's gradient
        torch.testing.assert_close(first["buffers_after"][n], (1 - 0.6) * first["grads"][n])
        assert not torch.equal(first["after"][n], first["before"][n])


def test_a_bad_group_optimizer_option_stops_before_training(data_dir, tmp_path):
    config = write_config(tmp_path, **{"model.param_groups.0.betas": [0.9, 0.99]})
    done = groupwise("fit", "--config", config, *quick(data_dir, tmp_path))
    assert done.returncode != 0
    assert "'filters' sets 'betas', which Muon does not take" in done.stderr
    assert not (tmp_path / "lightning_logs" / "version_0" / "checkpoints").exists()


def test_a_nan_loss_stops_naming_every_group_s_lr(data_dir, tmp_path):
    poison = {"class_path": "fault_injection.PoisonAtStep", "init_args": {"step": 4}}
    args = quick(data_dir, tmp_path, f"--trainer.callbacks+={json.dumps(poison)}")
    with pytest.raises(
        NonFiniteLossError,
        match=r"epoch 1, batch 1, global step 5; learning rates: "
        r"filters=0\.1, norm=0\.1, default=0\.025\.",
    ):
        run(["fit", "--config", write_config(tmp_path), *args])


# ---- resume and DDP (subprocesses) ---------------------------------------------------------


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run_and_a_changed_optimizer_is_refused(
    data_dir, tmp_path
):
    config = write_config(tmp_path)
    extra = ["--trainer.deterministic", "true"]
    whole = tmp_path / "whole"
    done = groupwise("fit", "--config", config, *quick(data_dir, whole, *extra))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = load(whole / "lightning_logs/version_0/checkpoints/last.ckpt")

    part = tmp_path / "part"
    kill = {"class_path": "fault_injection.KillAtStep", "init_args": {"step": 4}}
    args = quick(data_dir, part, *extra)
    killed = groupwise("fit", "--config", config, *args, f"--trainer.callbacks+={json.dumps(kill)}")
    assert killed.returncode == -signal.SIGKILL
    resumed = groupwise("fit", "--config", config, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = load(part / "lightning_logs/version_1/checkpoints/last.ckpt")
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    (a,), (b,) = expected["optimizer_states"], got["optimizer_states"]
    assert a["optimizers"] == b["optimizers"] == [
        "groupwise.optim.muon.Muon", "torch.optim.sgd.SGD", "torch.optim.sgd.SGD"
    ]  # fmt: skip
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        assert torch.equal(state["momentum_buffer"], b["state"][index]["momentum_buffer"])
    assert expected["param_group_optimizers"] == {
        "filters": "groupwise.optim.muon.Muon",
        "norm": "torch.optim.sgd.SGD",
        "default": "torch.optim.sgd.SGD",
    }

    changed = write_config(tmp_path, **{"model.param_groups.0.optimizer": "torch.optim.SGD"})
    before = snapshot(part)
    # by path: --ckpt_path last takes only a run of the same config (another optimizer: a
    # new run)
    last = part / "lightning_logs/version_1/checkpoints/last.ckpt"
    refused = groupwise("fit", "--config", changed, *args, "--ckpt_path", str(last))
    assert refused.returncode != 0
    assert (
        "filters: groupwise.optim.muon.Muon in the checkpoint, torch.optim.sgd.SGD in the config"
        in refused.stderr
    )
    assert_kept(part, before)


@pytest.mark.slow
def test_ddp_two_ranks_keep_identical_weights(data_dir, tmp_path):
    config = write_config(tmp_path)
    out = tmp_path / "ranks"
    record = {"class_path": "fault_injection.RecordRank", "init_args": {"out": str(out)}}
    args = quick(
        data_dir,
        tmp_path,
        "--data.batch_size", "10",
        "--trainer.strategy", "ddp",
        "--trainer.devices", "2",
        f"--trainer.callbacks+={json.dumps(record)}",
    )  # fmt: skip
    done = groupwise("fit", "--config", config, *args)
    assert done.returncode == 0, done.stderr[-4000:]
    rank0, rank1 = (load(out / f"rank{r}.pt")["state_dict"] for r in (0, 1))
    last = load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert rank0.keys() == rank1.keys()
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
    assert last["optimizer_states"][0]["optimizers"][0] == "groupwise.optim.muon.Muon"


def test_a_dotted_rule_name_is_refused_not_stepped_by_the_optimizer_of_its_prefix(
    data_dir, tmp_path
):
    """Issue 26.5: `filters.head` (no optimizer of its own) was stepped by the Muon of
    `filters`, at 2x Muon's lr, not by the model's SGD; a dot in a rule's name is refused."""
    head = {"name": "filters.head", "params": ["head.*"], "lr_scale": 2.0}
    rules = [CONFIG["model"]["param_groups"][0], head]
    config = write_config(tmp_path, **{"model.param_groups": rules, "trainer.max_epochs": 1})
    done = groupwise("fit", "--config", config, *quick(data_dir, tmp_path))
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        2,
        "error: parameter group name 'filters.head' has a dot; a dot joins a rule's name to "
        "the groups it makes ('<name>.no_decay', '<name>.<module>' of a layer_decay rule), so "
        "'filters.head' would be taken for part of 'filters' (its optimizer, FreezeGroups); "
        "use a name without dots, e.g. 'filters_head'",
    )
    assert not (tmp_path / "lightning_logs").exists()  # refused before a run directory

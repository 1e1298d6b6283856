"""Determinism, exact resume after SIGKILL, and checkpoints that survive a kill during a save.

Each run is the `groupwise` command in a subprocess: 60 training images in batches of 20
(3 steps per epoch), 3 epochs, lr x0.5 at epochs 1 and 2.
"""

import json
import signal

import pytest
import torch
from cli_run import LENET, f32, groupwise, load, quick, scalars
from lightning.pytorch import Callback
from torch import nn

from groupwise.nets import LeNet5

pytestmark = pytest.mark.slow

SCHEDULE = [
    "--trainer.max_epochs", "3",
    "--model.optimizer.init_args.lr", "0.01",
    "--model.scheduler.init_args.milestones", "[1, 2]",
    "--model.scheduler.init_args.gamma", "0.5",
    "--trainer.deterministic", "true",
]  # fmt: skip


class DropoutLeNet(LeNet5):
    """LeNet-5 with dropout after each hidden fully connected layer: the masks come from
    torch's global random state, so an exact resume needs that state restored."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        fc1, relu1, fc2, relu2, fc3 = list(self.classifier)[1:]
        self.classifier = nn.Sequential(
            nn.Flatten(), fc1, relu1, nn.Dropout(p), fc2, relu2, nn.Dropout(p), fc3
        )


DROPOUT = ["--model.net", json.dumps({"class_path": "test_resume.DropoutLeNet"})]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    done = groupwise("fit", "--config", LENET, *quick(data_dir, root, *SCHEDULE))
    assert done.returncode == 0, done.stderr[-3000:]
    return load(root / "lightning_logs/version_0/checkpoints/last.ckpt")


def fault(callback: str, **init_args) -> str:
    spec = {"class_path": f"fault_injection.{callback}", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


def assert_same_state(a: dict, b: dict) -> None:
    """Weights, optimizer state (momentum buffers, every group's lr) and scheduler, exactly."""
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    (opt_a,), (opt_b,) = a["optimizer_states"], b["optimizer_states"]
    assert opt_a["param_groups"] == opt_b["param_groups"]  # names, lrs, momentum, ...
    assert opt_a["state"].keys() == opt_b["state"].keys() and opt_a["state"]
    for index, state in opt_a["state"].items():
        assert torch.equal(state["momentum_buffer"], opt_b["state"][index]["momentum_buffer"])
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_two_seeded_deterministic_runs_are_bit_identical(data_dir, tmp_path, uninterrupted):
    done = groupwise("fit", "--config", LENET, *quick(data_dir, tmp_path, *SCHEDULE))
    assert done.returncode == 0, done.stderr[-3000:]
    again = load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert_same_state(again, uninterrupted)


def test_sigkill_mid_epoch_then_resume_from_last_matches_an_uninterrupted_run(
    data_dir, tmp_path, uninterrupted
):
    args = quick(data_dir, tmp_path, *SCHEDULE)
    killed = groupwise("fit", "--config", LENET, *args, fault("KillAtStep", step=4))
    assert killed.returncode == -signal.SIGKILL  # step 4 is the 2nd batch of epoch 1
    first = tmp_path / "lightning_logs/version_0"
    assert load(first / "checkpoints/last.ckpt")["global_step"] == 3  # end of epoch 0

    resumed = groupwise("fit", "--config", LENET, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr + resumed.stdout
    second = tmp_path / "lightning_logs/version_1"
    assert_same_state(load(second / "checkpoints/last.ckpt"), uninterrupted)
    # The milestones land on the same epochs: epochs 1 and 2 at half and a quarter.
    assert scalars(second)["lr-SGD/features"] == [(3, f32([0.005])[0]), (6, f32([0.0025])[0])]
    assert scalars(second)["lr-SGD/classifier"] == [(3, f32([0.05])[0]), (6, f32([0.025])[0])]


def test_kill_while_writing_last_ckpt_keeps_the_previous_one(data_dir, tmp_path, uninterrupted):
    args = quick(data_dir, tmp_path, *SCHEDULE)
    killed = groupwise("fit", "--config", LENET, *args, fault("KillDuringLastSave", epoch=1))
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "lightning_logs/version_0/checkpoints"
    # The half-written bytes went to a temporary file beside it, never to last.ckpt.
    (partial,) = checkpoints.glob(".last.ckpt.tmp-*")
    last = load(checkpoints / "last.ckpt")
    assert last["global_step"] == 3 and last["epoch"] == 0
    assert partial.stat().st_size < (checkpoints / "last.ckpt").stat().st_size

    resumed = groupwise("fit", "--config", LENET, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt")
    assert_same_state(final, uninterrupted)


def test_the_next_save_of_last_ckpt_removes_the_killed_save_s_temporary(
    data_dir, tmp_path, uninterrupted
):
    """Resumed into the same directory (a fixed logger version), the first save of
    last.ckpt removes the temporary the killed save left."""
    logger = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(tmp_path), "version": 0},
    }
    args = quick(data_dir, tmp_path, *SCHEDULE, "--trainer.logger", json.dumps(logger))
    killed = groupwise("fit", "--config", LENET, *args, fault("KillDuringLastSave", epoch=1))
    assert killed.returncode == -signal.SIGKILL
    checkpoints = tmp_path / "lightning_logs/version_0/checkpoints"
    assert len(list(checkpoints.glob(".last.ckpt.tmp-*"))) == 1

    resumed = groupwise("fit", "--config", LENET, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(checkpoints.glob(".*"))
    assert_same_state(load(checkpoints / "last.ckpt"), uninterrupted)


PER_SAMPLE = [
    "--data.train_transform",
    json.dumps(
        {
            "class_path": "torchvision.transforms.v2.Compose",
            "init_args": {
                "transforms": [
                    {"class_path": "torchvision.transforms.v2.RandomCrop",
                     "init_args": {"size": 32, "padding": 4}},
                    {"class_path": "torchvision.transforms.v2.RandomHorizontalFlip"},
                    {"class_path": "torchvision.transforms.v2.ToDtype",
                     "init_args": {"dtype": "torch.float32", "scale": True}},
                ]
            },
        }
    ),
]  # fmt: skip
RANDOM_DRAWS = {"dropout": DROPOUT, "per_sample_transform": PER_SAMPLE}


@pytest.mark.parametrize("draws", list(RANDOM_DRAWS))
def test_global_random_draws_after_sigkill_and_resume_are_bit_identical(data_dir, tmp_path, draws):
    """A dropout net, or per-sample torchvision transforms in the main process (num_workers
    0): both draw from torch's global generator, whose state the checkpoint carries."""
    extra = [*SCHEDULE, *RANDOM_DRAWS[draws]]
    whole = groupwise("fit", "--config", LENET, *quick(data_dir, tmp_path / "whole", *extra))
    assert whole.returncode == 0, whole.stderr[-3000:]
    args = quick(data_dir, tmp_path / "parts", *extra)
    killed = groupwise("fit", "--config", LENET, *args, fault("KillAtStep", step=4))
    assert killed.returncode == -signal.SIGKILL
    resumed = groupwise("fit", "--config", LENET, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected = load(tmp_path / "whole/lightning_logs/version_0/checkpoints/last.ckpt")
    final = load(tmp_path / "parts/lightning_logs/version_1/checkpoints/last.ckpt")
    assert_same_state(final, expected)
    # and the random streams themselves go on as in the uninterrupted run
    assert same(final["rng_states"], expected["rng_states"])


def same(a, b) -> bool:
    """Nested dicts, lists and tuples equal, tensors element for element."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return a == b


class SeedPerRank(Callback):
    """Reseed torch's global generator with ``1000 + rank`` at train start of a fresh run,
    so each DDP rank draws its own dropout masks (Lightning's seed_everything gives every
    rank the same seed) and a rank restored with another rank's states would diverge."""

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.ckpt_path is None:
            torch.manual_seed(1000 + trainer.global_rank)


def test_ddp_ranks_each_resume_their_own_random_states(data_dir, tmp_path):
    ddp = ["--data.batch_size", "10", "--trainer.strategy", "ddp", "--trainer.devices", "2"]
    seed = f"--trainer.callbacks+={json.dumps({'class_path': 'test_resume.SeedPerRank'})}"

    def fit(root, epochs: str, *extra: str) -> None:
        args = quick(data_dir, root, *SCHEDULE, *DROPOUT, *ddp, seed)
        done = groupwise("fit", "--config", LENET, *args, "--trainer.max_epochs", epochs, *extra)
        assert done.returncode == 0, done.stderr[-3000:]

    fit(tmp_path / "whole", "3")
    fit(tmp_path / "parts", "2")
    first = load(tmp_path / "parts/lightning_logs/version_0/checkpoints/last.ckpt")
    rank0, rank1 = first["rng_states"]
    assert not torch.equal(rank0["torch"], rank1["torch"])
    fit(tmp_path / "parts", "3", "--ckpt_path", "last")
    whole = load(tmp_path / "whole/lightning_logs/version_0/checkpoints/last.ckpt")
    resumed = load(tmp_path / "parts/lightning_logs/version_1/checkpoints/last.ckpt")
    assert_same_state(resumed, whole)
    assert same(resumed["rng_states"], whole["rng_states"])

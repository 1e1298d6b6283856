"""Bad checkpoints: an error that names the file, what is wrong with it and what to do, no
code from inside it ever run, and every file of the finished run it came from left as it was.

One finished two-epoch LeNet run is shared; each bad command runs against its root. Every
way a checkpoint reaches a run is covered: an explicit ``--ckpt_path FILE`` (read first by
``GroupwiseCLI``, which keeps the config's model instead of LightningCLI's merging of the
checkpoint's hyper-parameters over it), ``--ckpt_path last`` and ``--model.init_weights``.

An unreadable explicit ``--ckpt_path`` is refused while the command line is parsed: nothing is
written. Any later checkpoint error leaves, as the only new files, a new
``lightning_logs/version_N/`` with ``config.yaml`` and a TensorBoard event file (written by
LightningCLI and the logger at setup, before the checkpoint is read); never a checkpoint.
"""

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from cli_run import LENET, RESNET18, quick
from fault_injection import RecordTrainStart
from file_snapshot import assert_kept, snapshot

from groupwise.checkpoint.compat import LAYOUT_KEY
from groupwise.checkpoint.io import CheckpointError, load_checkpoint_file
from groupwise.classifier import Classifier
from groupwise.cli import run

LAST = "lightning_logs/version_0/checkpoints/last.ckpt"
TORCHVISION_NET = '{"class_path": "torchvision.models.resnet18", "init_args": {"num_classes": 10}}'
# LeNet's layout in the checkpoint: features (4 tensors), classifier (6 tensors).
GROUPS = {
    "renamed": '[{"name": "convs", "modules": ["features"]},'
    ' {"name": "fcs", "modules": ["classifier"], "lr_scale": 10}]',
    "added": '[{"name": "features", "modules": ["features"]},'
    ' {"name": "last_fc", "params": ["classifier.5.*"]},'
    ' {"name": "classifier", "modules": ["classifier"], "lr_scale": 10}]',
    "removed": '[{"name": "features", "modules": ["features"]}]',
    # same names and lrs, but each name now takes the other's modules
    "swapped": '[{"name": "features", "modules": ["classifier"]},'
    ' {"name": "classifier", "modules": ["features"], "lr_scale": 10}]',
}


@pytest.fixture(scope="module")
def root(data_dir, tmp_path_factory) -> Path:
    """A finished two-epoch LeNet run: version_0 with last.ckpt and the best checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    run(["fit", "--config", LENET, *quick(data_dir, root, "--trainer.max_epochs", "2")])
    assert load_checkpoint_file(root / LAST)["global_step"] == 6
    return root


@pytest.fixture(scope="module")
def bad_files(root, tmp_path_factory) -> dict[str, Path]:
    """Files that are not usable checkpoints, outside the run's root."""
    out = tmp_path_factory.mktemp("bad")
    data = (root / LAST).read_bytes()
    (out / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (out / "text.ckpt").write_text("epoch 3, val/acc 0.52\n")
    torch.save({"weights": {"fc.weight": torch.zeros(2, 2)}}, out / "no_state_dict.ckpt")
    torch.save([torch.zeros(2)], out / "list.ckpt")
    return {path.stem: path for path in out.iterdir()}


def cli(subcommand: str, config: str, data_dir: Path, root: Path, *args: str) -> None:
    run([subcommand, "--config", config, *quick(data_dir, root), *args])


class WritesFile:
    """Unpickling this calls ``open(path, "w")``: the file appears iff the pickle ran code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-shaped checkpoint whose unpickling would create ``marker``."""
    torch.save({"state_dict": {}, "epoch": 0, "payload": WritesFile(marker)}, path)
    return path


# ---- 1. weights of another net ------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        (["validate", RESNET18, "--ckpt_path", "LAST"], "net.backbone.0.0.weight"),
        (
            ["test", LENET, "--model.net", TORCHVISION_NET, "--ckpt_path", "LAST"],
            "net.conv1.weight",
        ),
        (["fit", RESNET18, "--model.init_weights", "LAST"], "net.backbone.0.0.weight"),
    ],
    # (`--ckpt_path last` takes only a run of this config: tests/test_ckpt_path_last.py)
    ids=["validate-FILE", "test-torchvision-net", "fit-init_weights"],
)
def test_checkpoint_of_another_net_names_missing_and_unexpected_weights(
    root, data_dir, command, missing
):
    subcommand, config, *args = [str(root / LAST) if a == "LAST" else a for a in command]
    before = snapshot(root)
    with pytest.raises(CheckpointError) as error:
        cli(subcommand, config, data_dir, root, *args)
    message = str(error.value)
    assert f"{root / LAST} holds weights for a different net:" in message
    assert f"missing from the checkpoint: ['{missing}'," in message
    assert "... (122 in all)" in message  # ResNet-18: 122 tensors the LeNet file lacks
    assert "unexpected in the checkpoint: ['net.features.0.weight'," in message
    assert "Use the model config the checkpoint was trained with" in message
    assert_kept(root, before)


# ---- 2. files that are not checkpoints ----------------------------------------------------

UNREADABLE = {
    "truncated": r"{path} is not a readable checkpoint \(RuntimeError: PytorchStreamReader "
    r"failed reading zip archive.*\)\. It may be truncated.*; use another one, e\.g\. the "
    r"best or an earlier last\.ckpt",
    "text": r"{path} is not a readable checkpoint \(.+\)\. It may be truncated",
    "no_state_dict": r"{path} is not a Lightning checkpoint: expected a dict with 'state_dict', "
    r"'optimizer_states', \.\.\.; found \['weights'\]",
    "list": r"{path} is not a Lightning checkpoint: expected a dict with 'state_dict', "
    r"'optimizer_states', \.\.\.; found list",
}


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_init_weights_from_a_file_that_is_no_checkpoint_names_it(root, data_dir, bad_files, kind):
    path = bad_files[kind]
    before = snapshot(root)
    with pytest.raises(CheckpointError, match=UNREADABLE[kind].format(path=re.escape(str(path)))):
        cli("fit", LENET, data_dir, root, "--model.init_weights", str(path))
    assert_kept(root, before)


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_validate_ckpt_path_of_a_file_that_is_no_checkpoint_names_it(
    root, data_dir, bad_files, kind
):
    path = bad_files[kind]
    before = snapshot(root)
    with pytest.raises(CheckpointError, match=UNREADABLE[kind].format(path=re.escape(str(path)))):
        cli("validate", LENET, data_dir, root, "--ckpt_path", str(path))
    assert snapshot(root) == before  # refused while parsing the command line: nothing written


def test_truncated_last_ckpt_found_by_ckpt_path_last_is_named_and_kept(root, data_dir, tmp_path):
    """A last.ckpt cut short (say, a full disk) under the run's own directory."""
    shutil.copytree(root / "lightning_logs", tmp_path / "lightning_logs")
    last = tmp_path / LAST
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    before = snapshot(tmp_path)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(last))} is not a readable"):
        cli("fit", LENET, data_dir, tmp_path, "--ckpt_path", "last", "--trainer.max_epochs", "3")
    assert_kept(tmp_path, before)  # the cut file is left for the user to inspect
    # The remedy the message names works: the best checkpoint beside it is whole.
    (best,) = last.parent.glob("epoch*.ckpt")
    best_weights = load_checkpoint_file(best)["state_dict"]
    assert best_weights.keys() == load_checkpoint_file(root / LAST)["state_dict"].keys()


# ---- 3. a checkpoint that would run code --------------------------------------------------


def test_the_malicious_payload_runs_code_when_unpickled_unsafely(tmp_path):
    """The payload is live: without weights_only it creates its marker file."""
    marker = tmp_path / "ran"
    path = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(path, weights_only=False)
    assert marker.is_file()


@pytest.mark.parametrize(
    ("subcommand", "option"),
    [("validate", "--ckpt_path"), ("fit", "--ckpt_path"), ("fit", "--model.init_weights")],
)
def test_malicious_checkpoint_is_refused_naming_what_it_would_run(
    root, data_dir, tmp_path, subcommand, option
):
    marker = tmp_path / "ran"
    path = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    before = snapshot(root)
    with pytest.raises(CheckpointError) as error:
        cli(subcommand, LENET, data_dir, root, option, str(path))
    message = str(error.value)
    assert f"{path} is not a readable checkpoint (UnpicklingError: " in message
    assert "GLOBAL io.open" in message  # what the weights-only load refused
    assert "\x1b[" not in message  # no terminal escape codes from torch's message
    assert not marker.exists()
    assert_kept(root, before)


def test_load_from_checkpoint_refuses_a_malicious_checkpoint(tmp_path):
    """``Classifier.load_from_checkpoint`` (no trainer, Lightning's loader) is weights-only too."""
    marker = tmp_path / "ran"
    path = malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(pickle.UnpicklingError, match="GLOBAL io.open"):
        Classifier.load_from_checkpoint(path)
    assert not marker.exists()


# ---- 4. resuming with other parameter groups ----------------------------------------------

CHECKPOINT_SIDE = r"checkpoint: features \(4 tensors\), classifier \(6 tensors\)"
LAYOUT_ERRORS = {
    "renamed": [
        r"config:\s+convs \(4 tensors\), fcs \(6 tensors\)",
        r"groups added: \['convs', 'fcs'\]",
        r"groups removed: \['classifier', 'features'\]",
    ],
    "added": [
        r"config:\s+features \(4 tensors\), last_fc \(2 tensors\), classifier \(4 tensors\)",
        r"groups added: \['last_fc'\]",
        r"'classifier\.5\.weight: classifier -> last_fc'",
    ],
    "removed": [
        r"config:\s+features \(4 tensors\), default \(6 tensors\)",
        r"groups removed: \['classifier'\]",
        r"'classifier\.1\.weight: classifier -> default'",
    ],
    "swapped": [
        r"config:\s+features \(6 tensors\), classifier \(4 tensors\)",
        r"parameters re-assigned: \['classifier\.1\.weight: classifier -> features'",
    ],
}


@pytest.mark.parametrize("change", list(LAYOUT_ERRORS))
def test_resume_with_other_param_groups_names_the_groups_on_each_side(root, data_dir, change):
    """(`--ckpt_path last` takes only a run of this config: tests/test_ckpt_path_last.py)"""
    before = snapshot(root)
    with pytest.raises(CheckpointError) as error:
        cli(
            "fit", LENET, data_dir, root,
            "--model.param_groups", GROUPS[change],
            "--ckpt_path", str(root / LAST),
            "--trainer.max_epochs", "3",
        )  # fmt: skip
    message = str(error.value)
    assert f"the parameter groups of checkpoint {root / LAST} differ" in message
    for expected in [CHECKPOINT_SIDE, *LAYOUT_ERRORS[change]]:
        assert re.search(expected, message), expected
    assert "use --model.init_weights CHECKPOINT instead of --ckpt_path" in message
    assert_kept(root, before)


def test_init_weights_starts_a_new_run_with_other_groups_from_the_weights(root, data_dir, tmp_path):
    """The documented escape hatch: the checkpoint's weights, a fresh optimizer and schedule."""
    before = snapshot(root)
    recorder = json.dumps({"class_path": "fault_injection.RecordTrainStart"})
    done = run(
        ["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs", "1")]
        + ["--model.param_groups", GROUPS["swapped"]]
        + ["--model.init_weights", str(root / LAST), f"--trainer.callbacks+={recorder}"]
    )
    (recording,) = [cb for cb in done.trainer.callbacks if isinstance(cb, RecordTrainStart)]
    start = recording.record
    saved = load_checkpoint_file(root / LAST)["state_dict"]
    assert start["state_dict"].keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(start["state_dict"][key], value), key
    assert (start["epoch"], start["global_step"]) == (0, 0)
    # The configured groups and lrs (LeNet's lr 0.005, x10 for "classifier"), no momentum yet.
    assert start["groups"] == [("features", 0.005, 6), ("classifier", 0.05, 4)]
    assert start["optimizer_state"] == 0
    assert start["scheduler_last_epoch"] == [0]
    # The new run records its own layout, so it can itself be resumed with --ckpt_path.
    new_last = load_checkpoint_file(tmp_path / LAST)
    assert new_last["global_step"] == 3
    assert new_last[LAYOUT_KEY]["features"][0] == "classifier.1.weight"
    assert new_last[LAYOUT_KEY]["classifier"][0] == "features.0.weight"
    assert_kept(root, before)


def test_layout_of_unnamed_groups_uses_lightnings_pg_names():
    from groupwise.checkpoint.compat import group_layout
    from groupwise.nets import LeNet5

    net = LeNet5()
    groups = [{"name": "features", "params": list(net.features.parameters())}]
    groups.append({"params": list(net.classifier.parameters())})  # as add_param_group makes
    layout = group_layout(net, groups)
    assert list(layout) == ["features", "pg1"]
    assert layout["pg1"] == [n for n, _ in net.named_parameters() if n.startswith("classifier.")]

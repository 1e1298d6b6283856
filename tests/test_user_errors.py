"""What the `groupwise` command prints for a mistake the user can fix: one message, exit 2.

Each test runs the real command (a subprocess, as a user would) and reads its whole
stderr: ``error: <message>`` with the nearest valid name for a typo, no traceback, and no
run directory left behind. ``GROUPWISE_DEBUG=1`` shows the traceback.
"""

from pathlib import Path

import pytest
import torch
from cli_run import LENET, groupwise

SEED_LINE = "Seed set to 0\n"  # Lightning's seed_everything, before the model is built


def fit(root: Path, *args: str, env: dict[str, str] | None = None):
    """`groupwise fit` of the LeNet config under ``root`` (the data is never reached)."""
    base = ["fit", "--config", LENET, "--trainer.default_root_dir", str(root)]
    return groupwise(*base, "--data.data_dir", str(root / "no-data"), *args, env=env)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


SGD_OPTIONS = sorted(torch.optim.SGD([torch.zeros(1, requires_grad=True)]).defaults)
LENET_MODULES = (
    "['features', 'features.0', 'features.1', 'features.2', 'features.3', 'features.4', "
    "'features.5', 'classifier', 'classifier.0', 'classifier.1', 'classifier.2', "
    "'classifier.3', 'classifier.4', 'classifier.5']"
)
FREEZE = """trainer:
  callbacks:
    - class_path: groupwise.callbacks.FreezeGroups
      init_args: {frozen: {featrues: 1}}
"""

CASES = {
    "unknown-module": (
        ["--model.param_groups", '[{"name": "f", "modules": ["featurs"]}]'],
        "error: parameter group 'f': unknown module 'featurs' (did you mean 'features'?); "
        f"modules that exist: {LENET_MODULES}",
    ),
    "misspelt-option": (
        ["--model.param_groups", '[{"name": "f", "modules": ["features"], "lr_scal": 2}]'],
        "error: parameter group 'f' sets 'lr_scal' (did you mean 'lr_scale'?), which the "
        f"optimizer does not take; valid options: {SGD_OPTIONS}, and the rule keys "
        "['lr_scale', 'modules', 'name', 'optimizer', 'params', 'schedule']",
    ),
    "group-schedule": (
        [
            "--model.param_groups",
            '[{"name": "f", "modules": ["features"], '
            '"schedule": {"shape": "linaer", "epochs": 3}}]',
        ],
        "error: parameter group 'f': schedule: shape must be one of ['linear', 'cosine', "
        "'constant', 'warmup_linear', 'warmup_cosine'], got 'linaer' (did you mean 'linear'?)",
    ),
    "milestones": (
        ["--model.scheduler.init_args.milestones", "[3, 2]"],
        "error: MultiStepLR milestones must be strictly increasing epochs, got [3, 2]; e.g. [2, 3]",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_a_bad_group_or_schedule_is_one_message_and_no_run_directory(tmp_path, case):
    args, message = CASES[case]
    done = fit(tmp_path, *args)
    assert done.returncode == 2
    assert done.stderr == SEED_LINE + message + "\n"
    assert done.stdout == ""
    assert not (tmp_path / "lightning_logs").exists()  # no empty version_0/ with config.yaml


def test_an_unknown_group_in_freeze_groups_gets_the_nearest_name(tmp_path):
    done = fit(tmp_path, "--config", write(tmp_path / "freeze.yaml", FREEZE))
    assert done.returncode == 2
    assert done.stderr == SEED_LINE + (
        "error: no optimizer parameter group named 'featrues' (did you mean 'features'?); "
        "the groups are ['features', 'classifier'] (a name also selects the groups that are "
        "part of it: '<name>.no_decay', and '<name>.<module>' of a layer_decay rule)\n"
    )
    assert not (tmp_path / "lightning_logs").exists()


def test_a_missing_checkpoint_gets_the_nearest_file_name(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"")
    missing = tmp_path / "lats.ckpt"
    done = fit(tmp_path, "--ckpt_path", str(missing))
    assert done.returncode == 2
    # checked while the arguments are parsed: before the seed is set
    hint = "(did you mean 'last.ckpt'?)"
    assert done.stderr == f"error: checkpoint {missing} does not exist {hint}\n"


def test_missing_data_is_one_message(tmp_path):
    (tmp_path / "no-data").mkdir()  # there, but empty
    done = fit(tmp_path, "--data.download", "false")
    assert done.returncode == 2
    error = done.stderr[done.stderr.index("error:") :]
    assert error.startswith(f"error: No CIFAR-10 data found in {tmp_path / 'no-data'}")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "lightning_logs").exists()  # prepare_data runs before the logger


def test_groupwise_debug_shows_the_traceback(tmp_path):
    args, message = CASES["unknown-module"]
    done = fit(tmp_path, *args, env={"GROUPWISE_DEBUG": "1"})
    assert done.returncode == 1
    assert done.stderr.startswith(SEED_LINE + "Traceback (most recent call last):\n")
    exception = "groupwise.optim.param_groups.ParamGroupError: " + message.removeprefix("error: ")
    assert done.stderr.endswith(exception + "\n")


def test_a_list_index_on_the_command_line_is_explained(tmp_path):
    """jsonargparse files ``--model.param_groups.0.lr_scale 2`` under the last group, as a
    key '0' holding ``lr_scale`` (or, in older releases, a key '0.lr_scale'): the error
    names that cause and the two ways that work."""
    done = fit(tmp_path, "--model.param_groups.0.lr_scale", "2")
    assert done.returncode == 2
    assert done.stderr.startswith(SEED_LINE + "error: parameter group 'classifier' sets '0")
    assert done.stderr.endswith(
        ". '0' came from --model.param_groups.0...: one item of a list cannot be set from the"
        " command line (it lands in the last group); edit the config file, or give the whole"
        " list with --model.param_groups '[...]'\n"
    )
    assert not (tmp_path / "lightning_logs").exists()


def test_no_arguments_is_one_message(tmp_path):
    done = groupwise()
    assert done.returncode == 2
    assert done.stderr.startswith("error: ")
    assert "subcommand" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1


def test_a_misspelt_data_dir_names_the_nearest_folder_and_makes_nothing(tmp_path):
    (tmp_path / "cifar10-jpeg" / "train").mkdir(parents=True)
    data_dir = tmp_path / "cifar10-jpg"
    done = groupwise(
        "fit", "--config", LENET, "--trainer.default_root_dir", str(tmp_path / "runs"),
        "--data.data_dir", str(data_dir),
    )  # fmt: skip
    assert done.returncode == 2
    error = done.stderr[done.stderr.index("error:") :]
    assert error.startswith(
        f"error: data_dir {data_dir} does not exist; the nearest existing folder is"
        f" {tmp_path / 'cifar10-jpeg'}.\n"
    )
    assert "Downloading" not in error and "Traceback" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar10-jpeg"]  # no runs/, no data

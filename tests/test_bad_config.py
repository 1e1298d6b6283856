"""Bad configuration: an error that names the bad key or value and what would be valid, and
every file of an earlier run under the same ``--trainer.default_root_dir`` left as it was.

Two kinds of error, both found before anything is written:
- the parser's (jsonargparse, through LightningCLI): unknown keys, wrong types, unknown
  classes, broken YAML. Usage and the error go to stderr, exit code 2.
- the model's (parameter groups, scheduler milestones): ``fit`` builds the optimizer and
  scheduler once before the trainer exists (``groupwise.preflight``), so no
  ``lightning_logs/version_N/`` is made. ``tests/test_user_errors.py`` reads what the
  ``groupwise`` command prints for them.
"""

import re
from pathlib import Path

import pytest
from cli_run import LENET, quick
from file_snapshot import snapshot

from groupwise.cli import run
from groupwise.optim.param_groups import ParamGroupError

LAST = "lightning_logs/version_0/checkpoints/last.ckpt"


@pytest.fixture(scope="module")
def root(data_dir, tmp_path_factory) -> Path:
    """A finished one-epoch LeNet run: the files a bad command must not touch."""
    root = tmp_path_factory.mktemp("runs")
    run(["fit", "--config", LENET, *quick(data_dir, root, "--trainer.max_epochs", "1")])
    assert (root / LAST).is_file()
    return root


def parse_error(capsys, root: Path, data_dir: Path, *args: str) -> tuple[str, str]:
    """Run ``fit`` with ``args``, expect the parser to stop it; return (error, whole stderr)."""
    before = snapshot(root)
    with pytest.raises(SystemExit) as stop:
        run(["fit", "--config", LENET, *quick(data_dir, root), *args])
    assert stop.value.code == 2
    assert snapshot(root) == before  # the parser stops before anything is written
    stderr = capsys.readouterr().err
    return stderr[stderr.rindex("error:") :], stderr


# ---- 1. the parser: unknown keys, wrong types, unknown classes, broken YAML ----------------


@pytest.mark.parametrize(
    ("yaml", "bad_key", "valid_option"),
    [
        ("trainer:\n  max_epoch: 3\n", "trainer.max_epoch", "--trainer.max_epochs"),
        ("model:\n  nett:\n    class_path: groupwise.nets.LeNet5\n", "model.nett", "--model.net "),
    ],
    ids=["trainer.max_epoch", "model.nett"],
)
def test_unknown_key_in_a_config_file_is_named(
    capsys, root, data_dir, tmp_path, yaml, bad_key, valid_option
):
    config = tmp_path / "typo.yaml"
    config.write_text(yaml)
    error, stderr = parse_error(capsys, root, data_dir, "--config", str(config))
    assert "does not accept option" in error and f"'{bad_key}" in error
    # jsonargparse suggests no near match; the usage above the error lists the valid keys.
    assert valid_option in stderr


def test_wrong_type_names_the_key_the_value_and_the_expected_type(capsys, root, data_dir):
    error, _ = parse_error(capsys, root, data_dir, "--trainer.max_epochs", "abc")
    assert "trainer.max_epochs" in error
    assert "abc" in error
    assert "Expected a <class 'int'>" in error


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("model.optimizer", "torch.optim.NoSuchOpt"),
        ("model.scheduler", "torch.optim.lr_scheduler.NoSuchLR"),
    ],
    ids=["optimizer", "scheduler"],
)
def test_unknown_optimizer_or_scheduler_class_is_named(capsys, root, data_dir, key, value):
    error, _ = parse_error(capsys, root, data_dir, f"--{key}", value)
    module, name = value.rsplit(".", 1)
    assert f'"{key}"' in error
    assert f"module '{module}' has no attribute '{name}'" in error
    # What is valid: a class (or function) that builds the optimizer / scheduler.
    assert "expects a function or a callable class" in error


def write_broken_yaml(tmp_path: Path) -> Path:
    config = tmp_path / "broken.yaml"
    config.write_text("trainer:\n  max_epochs: [3\n  devices: 1\n")  # unclosed [ on line 2
    return config


def test_invalid_yaml_names_the_line_and_column(capsys, root, data_dir, tmp_path):
    config = write_broken_yaml(tmp_path)
    error, _ = parse_error(capsys, root, data_dir, "--config", str(config))
    assert "cannot read config file" in error
    assert "line 2, column 15" in error  # where the unclosed flow sequence starts


def test_invalid_yaml_names_the_file(capsys, root, data_dir, tmp_path):
    config = write_broken_yaml(tmp_path)
    error, _ = parse_error(capsys, root, data_dir, "--config", str(config))
    assert str(config) in error


# ---- 2. the model: scheduler milestones and interval ----------------------------------------


@pytest.mark.parametrize(
    ("milestones", "message"),
    [
        ("[2, 1]", "MultiStepLR milestones must be strictly increasing epochs, got [2, 1]; "
                   "e.g. [1, 2]"),
        ("[1, 1]", "MultiStepLR milestones must be strictly increasing epochs, got [1, 1]; "
                   "e.g. [1]"),
        ("[-1, 2]", "MultiStepLR milestones must be >= 0, got [-1, 2]"),
    ],
    ids=["decreasing", "duplicated", "negative"],
)  # fmt: skip
def test_bad_milestones_are_named_with_a_valid_example(root, data_dir, milestones, message):
    before = snapshot(root)
    with pytest.raises(ValueError, match=re.escape(message)):
        run(
            ["fit", "--config", LENET, *quick(data_dir, root)]
            + ["--model.scheduler.init_args.milestones", milestones]
        )
    assert snapshot(root) == before  # checked before the run directory is made


def test_epoch_scheduler_stepped_per_batch_warns_loudly(root, data_dir):
    before = snapshot(root)
    warning = (
        "MultiStepLR is stepped after every batch (scheduler_interval: step): its milestones "
        "[10, 15] will count batches, not epochs; set model.scheduler_interval: epoch"
    )
    with pytest.warns(UserWarning, match=re.escape(warning)):
        run(
            ["fit", "--config", LENET, *quick(data_dir, root, "--trainer.fast_dev_run", "1")]
            + ["--model.scheduler_interval", "step"]
        )
    assert snapshot(root) == before  # fast_dev_run writes no logs or checkpoints


# ---- 3. the model: parameter groups -----------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (
            '[{"name": "features", "modules": ["features"]},'
            ' {"name": "features", "modules": ["classifier"]}]',
            r"duplicate parameter group name 'features'; names so far: \['features'\]",
        ),
        (
            '[{"name": "head", "params": ["fc.*"]}]',
            r"parameter group 'head' matches no parameter \(modules=\[\], params=\['fc\.\*'\]\);"
            r" parameter names look like \['features\.0\.weight', 'features\.0\.bias', ",
        ),
        (
            '[{"name": "features", "modules": ["features"], "betas": [0.9, 0.99]}]',
            r"parameter group 'features' sets 'betas', which the optimizer does not take; "
            r"valid options: \[.*'lr', .*'momentum', .*'weight_decay'\], and the rule keys",
        ),
    ],
    ids=["duplicate-name", "matches-nothing", "betas-for-SGD"],
)
def test_bad_param_groups_name_the_group_and_what_is_valid(root, data_dir, groups, message):
    before = snapshot(root)
    with pytest.raises(ParamGroupError, match=message):
        run(["fit", "--config", LENET, *quick(data_dir, root), "--model.param_groups", groups])
    assert snapshot(root) == before  # checked before the run directory is made

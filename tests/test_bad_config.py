"""Bad configuration: an error that names the bad key or value and what would be valid, and
every file of an earlier run under the same ``--trainer.default_root_dir`` left as it was.

Two kinds of error, both found before anything is written:
- the parser's (jsonargparse, through LightningCLI): unknown keys, wrong types, unknown
  classes, broken YAML. Usage and the error go to stderr, exit code 2.
- the model's (parameter groups, scheduler milestones): ``fit`` builds the optimizer and
  scheduler once before the trainer exists (``groupwise.cli.preflight``), so no
  ``lightning_logs/version_N/`` is made. ``tests/test_user_errors.py`` reads what the
  ``groupwise`` command prints for them.
"""

import contextlib
import difflib
import io
import re
from pathlib import Path

import pytest
from cli_run import LENET, quick
from file_snapshot import snapshot
from hypothesis import assume, given, settings
from hypothesis import strategies as st

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


UNKNOWN_KEYS = {  # a misspelt key of each section: (key, the valid key it means)
    "trainer": ("trainer.max_epoch", "trainer.max_epochs"),
    "model": ("model.lable_smoothing", "model.label_smoothing"),
    "data": ("data.data_dri", "data.data_dir"),
    "checkpoint": ("checkpoint.monitr", "checkpoint.monitor"),
    "last_checkpoint": (
        "last_checkpoint.every_n_train_step",
        "last_checkpoint.every_n_train_steps",
    ),
    "group_stats": ("group_stats.every_n_step", "group_stats.every_n_steps"),
    "top level": ("seed_everythin", "seed_everything"),
}


def as_yaml(key: str, value: str) -> str:
    """``a.b.c: v`` as nested YAML."""
    *parents, leaf = key.split(".")
    lines = [f"{'  ' * depth}{name}:" for depth, name in enumerate(parents)]
    return "\n".join([*lines, f"{'  ' * len(parents)}{leaf}: {value}"]) + "\n"


# each section once, in a config file or on the command line; the trainer both ways
WHERE = [("trainer", "yaml"), ("trainer", "command line"), ("model", "command line")]
WHERE += [("data", "yaml"), ("checkpoint", "command line"), ("last_checkpoint", "yaml")]
WHERE += [("group_stats", "command line"), ("top level", "yaml")]


@pytest.mark.parametrize(("section", "where"), WHERE, ids=[f"{s}-{w}" for s, w in WHERE])
def test_an_unknown_key_is_one_line_with_the_nearest_valid_key(
    capsys, root, data_dir, tmp_path, section, where
):
    bad, valid = UNKNOWN_KEYS[section]
    if where == "yaml":
        config = tmp_path / "typo.yaml"
        config.write_text(as_yaml(bad, "3"))
        args, shown = ["--config", str(config)], (f"'{bad}'", f"'{valid}'")
    else:
        args, shown = [f"--{bad}", "3"], (f"--{bad} 3", f"'--{valid}'")
    _, stderr = parse_error(capsys, root, data_dir, *args)
    # one line, no usage dump: the bad key, the nearest valid one, where to see them all
    assert stderr.count("\n") == 1, stderr
    assert stderr.startswith("error: ")
    assert shown[0] in stderr and f"(did you mean {shown[1]}?)" in stderr
    assert stderr.endswith(" fit --help` lists every option\n")


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


# ---- 4. a misspelt key, as a property: one line naming the nearest valid key -----------------


@pytest.fixture(scope="module")
def fit_parser():
    """The parser of `groupwise fit`'s options (built without running anything)."""
    return run(["--config", LENET], run=False).parser


def misspell(key: str, kind: str, at: int, char: str) -> str:
    """``key`` with one character deleted, replaced, inserted or swapped with the next."""
    at %= len(key)
    if kind == "delete":
        return key[:at] + key[at + 1 :]
    if kind == "replace":
        return key[:at] + char + key[at + 1 :]
    if kind == "insert":
        return key[:at] + char + key[at:]
    return key[:at] + key[at + 1 : at + 2] + key[at] + key[at + 2 :]


TYPOS = {
    "data": st.data(),
    "kind": st.sampled_from(["delete", "replace", "insert", "swap"]),
    "at": st.integers(0, 60),
    "char": st.sampled_from("abcdefghijklmnopqrstuvwxyz_"),
}


@settings(max_examples=60, deadline=None)
@given(**TYPOS)
def test_a_misspelt_option_gets_the_nearest_valid_one(fit_parser, data, kind, at, char):
    check_misspelt_option(fit_parser, data, kind, at, char)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None)
@given(**TYPOS)
def test_a_misspelt_option_gets_the_nearest_valid_one_many(fit_parser, data, kind, at, char):
    check_misspelt_option(fit_parser, data, kind, at, char)


def check_misspelt_option(fit_parser, data, kind: str, at: int, char: str) -> None:
    """``--<a valid key with one typo> 1`` exits 2 with one line that suggests that key,
    or one at least as close to the typo (difflib's ratio)."""
    keys = sorted(fit_parser.get_defaults().keys())
    key = data.draw(st.sampled_from(keys), label="key")
    typo = misspell(key, kind, at, char)
    assume(typo not in keys and "." in typo and not typo.endswith("."))
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
        fit_parser.parse_args([f"--{typo}", "1"])
    assert stop.value.code == 2
    error = stderr.getvalue()
    assert error.count("\n") == 1 and error.startswith("error: "), error
    found = re.search(r"\(did you mean '(?:--)?([^']+)'\?\)", error)
    assert found, error
    suggested = found[1]
    if suggested not in keys:  # inside a class's {class_path, init_args}: the key's tail
        tail = suggested.count(".") + 1
        typo, key = (".".join(k.split(".")[-tail:]) for k in (typo, key))
    # the key the typo came from, or one at least as close to it
    ratio = difflib.SequenceMatcher(None, typo, suggested).ratio()
    assert suggested == key or ratio >= difflib.SequenceMatcher(None, typo, key).ratio()


@pytest.mark.parametrize(
    ("option", "nearest"),
    [
        ("model.optimizer.lass_path", "class_path"),
        ("model.optimizer.init_args.lrr", "lr"),
        ("model.optimizer.nit_args.dampening", "init_args.dampening"),
    ],
)
def test_a_misspelt_option_of_a_class_is_one_line_with_the_nearest(
    capsys, root, data_dir, option, nearest
):
    """Found by the property above: jsonargparse's error for an unknown option inside a
    class's ``{class_path, init_args}`` spans two lines and suggests nothing."""
    _, stderr = parse_error(capsys, root, data_dir, f"--{option}", "1")
    assert stderr.count("\n") == 1 and stderr.startswith('error: Parser key "model.optimizer"')
    assert f"(did you mean '{nearest}'?)" in stderr


def test_a_two_letter_init_arg_typo_gets_the_nearest_one(fit_parser, capsys):
    """Found by the 1500-case property in CI: ``--model.optimizer.init_args.ar`` (``lr``
    with one letter replaced) got no hint, as difflib's ratio of two 2-letter names (0.5)
    is below its cutoff; the name with its ``init_args.`` prefix is compared then."""
    with pytest.raises(SystemExit) as stop:
        fit_parser.parse_args(["--model.optimizer.init_args.ar", "1"])
    assert stop.value.code == 2
    assert "(did you mean 'init_args.lr'?)" in capsys.readouterr().err

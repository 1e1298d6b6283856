"""What a run prints: its own lines, each library warning about it once, no library chatter.

The fits run the real `groupwise` command and compare its whole output, line by line, with
the lines a user should see, so that a new library message fails here instead of joining
the noise. ``GROUPWISE_VERBOSE=1`` shows everything; ``groupwise.cli.run`` called from a
script leaves the script's warning filters and loggers as it found them.
"""

import json
import logging
import re
import warnings
from pathlib import Path

import pytest
from cli_run import LENET, groupwise, quick
from hypothesis import given, settings
from hypothesis import strategies as st

from groupwise.cli import run
from groupwise.runtime.console import (
    QUIET_LOGS,
    QUIET_WARNINGS,
    QuietLogs,
    format_warning,
    module_name,
    quiet_console,
    quiet_loggers,
)

MODEL_SUMMARY = "<Lightning's model summary>"
SUMMARY_LINE = (
    r"\s*\| Name\s+\| Type.*",  # header
    r"-+",
    r"\d+ \| \w+\s+\| \w+\s+\| .*",  # one row per child module
    r"[\d.]+( [KMGT])?\s+[A-Z][\w ()-]*",  # "62.0 K    Trainable params", ...
)


def fit_lines(processes: int, batches: int) -> list[str]:
    """The whole console of the 2-epoch LeNet fit of ``fit`` below (regular expressions)."""
    device = "device: cpu, 1 process"
    if processes > 1:
        device = f"device: cpu, {processes} processes (DDP, 1 node x {processes} devices)"
    return [
        "Seed set to 0",
        re.escape(device),
        "SGD parameter groups:",
        "name        tensors  parameters  lr     weight_decay  momentum",
        "----------  -------  ----------  -----  ------------  --------",
        "features    4        2,872       0.005  0.0005        0.9",
        "classifier  6        59,134      0.05   0.0005        0.9",
        re.escape(
            "warning: MultiStepLR: milestones [10, 15] are at or past the run's 2 epochs"
            " (scheduler_interval: epoch), so they never take effect"
        ),
        "",
        re.escape(MODEL_SUMMARY),
        re.escape(
            f"warning: The number of training batches ({batches}) is smaller than the logging"
            " interval Trainer(log_every_n_steps=50). Set a lower value for log_every_n_steps if"
            " you want to see logs for the training epoch. (PossibleUserWarning,"
            " lightning.pytorch.loops.fit_loop)"
        ),
        re.escape("`Trainer.fit` stopped: `max_epochs=2` reached."),
        r"fit done in \d.* s",
        r"run directory  .*/lightning_logs/version_0",
        r"best val/acc   \d\.\d{4} at epoch \d: .*/checkpoints/epoch\d{3}-acc\d\.\d{4}\.ckpt",
        r"last\.ckpt      .*/lightning_logs/version_0/checkpoints/last\.ckpt",
        r"TensorBoard    \S+ --logdir .*/lightning_logs/version_0",
    ]


def console(text: str) -> list[str]:
    """The lines of ``text``, Lightning's model summary block replaced by one line."""
    lines, out = text.splitlines(), []
    while lines:
        line = lines.pop(0)
        if re.fullmatch(SUMMARY_LINE[0], line):
            while lines and any(re.fullmatch(p, lines[0]) for p in SUMMARY_LINE):
                lines.pop(0)
            line = MODEL_SUMMARY
        out.append(line)
    return out


def assert_console(text: str, expected: list[str]) -> None:
    lines = console(text)
    unexpected = [
        (i, line)
        for i, (line, pattern) in enumerate(zip(lines, expected, strict=False))
        if not re.fullmatch(pattern, line)
    ]
    assert not unexpected and len(lines) == len(expected), "\n".join(lines)


def fit(data_dir: Path, root: Path, *extra: str, env: dict[str, str] | None = None):
    """`groupwise fit` of configs/lenet.yaml for 2 epochs on the fabricated images (60 to
    train, 20 to validate, batches of 20), with the model summary, without the progress bar
    (its redraws depend on timing)."""
    args = ["--data.data_dir", str(data_dir), "--data.val_size", "20", "--data.batch_size", "20"]
    args += ["--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "2"]
    done = groupwise("fit", "--config", LENET, *args, *extra, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_a_short_fit_prints_its_own_lines_and_nothing_else(data_dir, tmp_path):
    done = fit(data_dir, tmp_path)
    assert done.stdout == ""
    assert_console(done.stderr, fit_lines(processes=1, batches=3))


@pytest.mark.slow
def test_a_two_process_ddp_fit_prints_each_line_once(data_dir, tmp_path):
    done = fit(data_dir, tmp_path, "--trainer.strategy", "ddp", "--trainer.devices", "2")
    assert done.stdout == ""
    assert_console(done.stderr, fit_lines(processes=2, batches=2))


def test_verbose_shows_what_the_libraries_print(data_dir, tmp_path):
    done = fit(data_dir, tmp_path, env={"GROUPWISE_VERBOSE": "1"})
    lines = done.stderr.splitlines()
    assert "GPU available: False, used: False" in lines
    assert "TPU available: False, using: 0 TPU cores" in lines
    if lightning_prints_the_litlogger_tip():  # Lightning 2.6.0 (the lower bound) has none
        assert any("litlogger" in line for line in lines)
    source = str(Path("src", "groupwise", "classifier.py"))  # Python's own warning format
    assert any(source in line and "UserWarning: MultiStepLR: milestones" in line for line in lines)


def lightning_prints_the_litlogger_tip() -> bool:
    import lightning.pytorch.trainer.connectors.logger_connector.logger_connector as connector

    return "litlogger" in Path(connector.__file__).read_text()


NOISE = (
    "GPU available",
    "TPU available",
    "litlogger",
    "was configured so",
    "`weights_only` was not set",
    "dirpath has changed",
    "LeafSpec",
    "Initializing distributed",
)


@pytest.mark.slow  # three processes, one after the other
def test_preemption_resume_and_validate_print_no_library_notes(data_dir, tmp_path):
    """A SIGTERM save (Lightning: "`weights_only` was not set"), a resume into a new run
    directory and a validate of its checkpoint (Lightning: "The dirpath has changed")."""
    args = quick(data_dir, tmp_path, "--trainer.max_epochs", "2")
    signal = {"class_path": "fault_injection.SignalAt", "init_args": {"signal": "SIGTERM"}}
    signal["init_args"].update(stamp=str(tmp_path / "stamp"), step=4)
    sigterm = f"--trainer.callbacks+={json.dumps(signal)}"
    preempted = groupwise("fit", "--config", LENET, *args, sigterm)
    assert preempted.returncode == 75, preempted.stderr[-3000:]
    resumed = groupwise("fit", "--config", LENET, *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    validated = groupwise("validate", "--config", LENET, *args, "--ckpt_path", "last")
    assert validated.returncode == 0, validated.stderr[-3000:]
    for done in (preempted, resumed, validated):
        assert [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)] == []
        assert not re.search(r"\.py:\d+: ", done.stderr)  # no warning with its source line
    assert "Preemption (SIGTERM): saved" in preempted.stderr


def logging_state() -> list:
    loggers = [logging.getLogger(), *quiet_loggers(), logging.getLogger("lightning.pytorch")]
    return [(logger, list(logger.filters), list(logger.handlers)) for logger in loggers]


def test_run_leaves_the_callers_warnings_and_logging_as_it_found_them(data_dir, tmp_path):
    filters, format_, show = list(warnings.filters), warnings.formatwarning, warnings.showwarning
    loggers = logging_state()
    run(["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs", "1")])
    assert warnings.filters == filters
    assert warnings.formatwarning is format_ and warnings.showwarning is show
    assert logging_state() == loggers


# Lines Lightning 2.6 printed in the runs above: (module, message), one per rule.
LIBRARY_LOGS = [
    ("lightning.pytorch.trainer.setup", "GPU available: False, used: False"),
    ("lightning.pytorch.trainer.setup", "TPU available: False, using: 0 TPU cores"),
    (
        "lightning.pytorch.trainer.setup",
        "`Trainer(limit_val_batches=1.0)` was configured so 100% of the batches will be used..",
    ),
    (
        "lightning.pytorch.trainer.connectors.logger_connector.logger_connector",
        "💡 Tip: For seamless cloud logging and experiment tracking, try installing"
        " [litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, ...",
    ),
    (
        "lightning.pytorch.trainer.connectors.checkpoint_connector",
        "`weights_only` was not set, defaulting to `False`.",
    ),
    (
        "lightning.fabric.utilities.distributed",
        "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2",
    ),
    (
        "lightning.fabric.utilities.distributed",
        f"{'-' * 100}\ndistributed_backend=gloo\nAll distributed processes registered.",
    ),
    ("lightning.fabric.utilities.seed", "[rank: 1] Seed set to 0"),
]
LIBRARY_WARNINGS = [
    (
        "lightning.pytorch.utilities._pytree",
        "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)"
        " and treespec.is_leaf()` instead.",
    ),
    (
        "lightning.fabric.utilities.distributed",
        "torch.distributed.nn.functional.all_gather is deprecated, use"
        " torch.distributed._functional_collectives.all_gather_single instead.",
    ),
    (
        "lightning.pytorch.callbacks.model_checkpoint",
        "The dirpath has changed from '/a/checkpoints' to '/b/checkpoints', therefore"
        " `best_model_score`, ... won't be reloaded. Only `best_model_path` will be reloaded.",
    ),
]
SITE = Path(pytest.__file__).parents[1]  # site-packages: names are relative to it
modules = st.lists(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=4)


def source_file(module: str) -> str:
    return str(SITE.joinpath(*module.split(".")).with_suffix(".py"))


def record(module: str, message: str) -> logging.LogRecord:
    return logging.LogRecord("x", logging.INFO, source_file(module), 1, message, None, None)


def test_each_rule_hides_its_example_and_each_example_has_a_rule():
    logs = [sum(r.matches(m, text) for r in QUIET_LOGS) for m, text in LIBRARY_LOGS]
    warns = [sum(r.matches(m, text) for r in QUIET_WARNINGS) for m, text in LIBRARY_WARNINGS]
    assert logs == [1] * len(QUIET_LOGS) and warns == [1] * len(QUIET_WARNINGS)
    assert QuietLogs().filter(record("lightning.fabric.utilities.seed", "Seed set to 0"))  # rank 0


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(LIBRARY_LOGS), modules, st.text(max_size=20))
def test_a_log_line_is_hidden_only_with_its_rules_text_and_module(example, parts, suffix):
    module, text = example
    other = ".".join(parts)
    assert not QuietLogs().filter(record(module, text + suffix))
    assert QuietLogs().filter(record(other, text + suffix))  # another module: shown
    assert QuietLogs().filter(record(module, suffix + "|" + text))  # only at the start


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(LIBRARY_WARNINGS), modules, st.text(max_size=20))
def test_a_warning_is_hidden_only_with_its_rules_text_and_module(example, parts, suffix):
    module, text = example
    other = ".".join(parts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a caller's own filter: the run's go in front of it
        with quiet_console(verbose=False):
            for name in (module, other):
                warnings.warn_explicit(text + suffix, FutureWarning, "f.py", 1, module=name)
    assert [str(w.message) for w in caught] == [text + suffix]


@settings(max_examples=60, deadline=None)
@given(modules, st.text(), st.sampled_from([UserWarning, FutureWarning]), st.integers(1, 999))
def test_a_warning_is_printed_with_its_text_and_without_a_source_line(parts, text, kind, line):
    module = ".".join(parts)
    assert module_name(source_file(module)) == module
    own = format_warning(text, kind, source_file(f"groupwise.{module}"), line, "source()")
    assert own == f"warning: {text}\n"
    other = format_warning(text, kind, source_file(f"x{module}"), line, "source()")
    assert other == f"warning: {text} ({kind.__name__}, x{module})\n"

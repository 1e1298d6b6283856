"""The docs cannot drift from the code: every shipped config and every YAML snippet of the
README and of ``docs/*.md`` builds, and every fenced command in them runs.

What is read: ``README.md`` and every ``docs/**/*.md``, found by globbing, so pages added or
split later are covered without editing this file. In them, fenced code blocks:

- ```` ```yaml ````: a config. A snippet is most often a fragment (``model.param_groups``,
  ``trainer.callbacks``, ...): it is merged onto a shipped config the way a user merges it,
  as a second ``--config`` after the shipped one (LightningCLI merges them in order; the
  snippet's keys win, lists are replaced). The shipped configs are tried in the order of
  ``BASES`` (cheapest net first) and the snippet passes if it builds on one of them (a
  ``FreezeGroups`` snippet that names the ``backbone`` group fits resnet18.yaml, not
  lenet.yaml); if it builds on none, the test shows each one's error. "Builds" means: the
  CLI parses it and instantiates the model, data module and trainer with every callback,
  the optimizer's parameter groups and the scheduler are built and checked as ``fit``
  checks them before it starts (``groupwise.cli.preflight``), and the net maps a batch of two
  images to ``num_classes`` logits.
- ```` ```bash ```` / ``sh`` / ``shell`` / ``console``: each command (continuation lines
  joined, comments dropped) whose program is ``groupwise``, ``python``/``.venv/bin/python``,
  ``bash scripts/...`` or another program listed in ``NOT_RUN``. Cheap ones run as written
  from a scratch directory that looks like a clone with data (``configs/`` and
  ``scripts/`` of this repo, a fabricated CIFAR-10 at ``data/`` and ``data/cifar10-jpeg``,
  an earlier run's ``lightning_logs/version_0``), with ``--trainer.fast_dev_run 1``
  appended where they train or evaluate. Expensive or unrunnable ones are listed in
  ``NOT_RUN`` with the reason; a command that matches no rule fails the test, so a new
  command in the docs needs a decision here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_run import GROUPWISE, LENET, ROOT, quick
from fake_cifar import write_python_layout

from groupwise.cli import run
from groupwise.cli.preflight import check_before_fit

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
BASES = [ROOT / "configs" / name for name in ("lenet.yaml", "fast.yaml", "resnet18.yaml")]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = {"bash", "sh", "shell", "console"}

# Commands not run, by how they start, and why.
NOT_RUN = {
    "bash scripts/train.sh": "sets up .venv and runs the full recipe on the real CIFAR-10",
    "bash scripts/test.sh": "runs this test suite",
    "bash scripts/bench.sh": "benchmarks: minutes on the real CIFAR-10",
    ".venv/bin/tensorboard": "a server that runs until stopped (tests/test_tensorboard_server.py)",
    "tensorboard": "a server that runs until stopped (tests/test_tensorboard_server.py)",
    "srun": "needs a SLURM cluster",
    "torchrun": "a multi-node launch, one agent per node",
    "sbatch": "needs a SLURM cluster",
    "groupwise sweep": "many full fits (tests/test_sweep*.py run sweeps on fabricated data)",
    "groupwise fit --config configs/airbench94.yaml": (
        "one step of 2000 images: 4 GB of memory and 40 s on a 2-core CPU"
        " (tests/test_airbench_recipe.py fits the recipe with a narrow net)"
    ),
}
RUNS = ("fit", "validate", "test", "predict")


def blocks(kinds: set[str]) -> list[tuple[str, str]]:
    """(id, text) of every fenced block of one of ``kinds`` on the doc pages."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match[1] in kinds:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(ROOT)}:{line}", match[2]))
    return found


def commands(block: str) -> list[str]:
    """The block's commands: ``$ `` prompts and comments dropped, continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    found = []
    for line in joined.splitlines():
        words = shlex.split(line.removeprefix("$ "), comments=True)
        if words:
            found.append(shlex.join(words))
    return found


YAML_SNIPPETS = blocks({"yaml", "yml"})
COMMANDS = [(f"{where}: {cmd}", cmd) for where, block in blocks(SHELL) for cmd in commands(block)]


def test_the_docs_have_snippets_and_commands():
    assert YAML_SNIPPETS and COMMANDS  # the extraction found them (the fences are parsed)


def build(data_dir: Path, root: Path, *configs: Path) -> None:
    """Parse and instantiate like ``groupwise fit``, check groups and schedule, one forward."""
    args = [arg for config in configs for arg in ("--config", str(config))]
    cli = run([*args, *quick(data_dir, root)], run=False)
    check_before_fit(cli.model, cli.configured_callbacks())
    logits = cli.model(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, cli.model.num_classes)


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_builds(data_dir, tmp_path, config):
    build(data_dir, tmp_path, config)


@pytest.mark.parametrize(("where", "snippet"), YAML_SNIPPETS, ids=[w for w, _ in YAML_SNIPPETS])
def test_every_yaml_snippet_builds_on_a_shipped_config(data_dir, tmp_path, where, snippet):
    path = tmp_path / "snippet.yaml"
    path.write_text(snippet)
    errors = {}
    for base in BASES:
        try:
            build(data_dir, tmp_path, base, path)
            return
        except (Exception, SystemExit) as error:  # SystemExit: jsonargparse's parse errors
            errors[base.name] = f"{type(error).__name__}: {error}"
    pytest.fail(f"the snippet at {where} builds on no shipped config: {errors}")


# ---- the commands ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A directory that looks like a clone after ``scripts/train.sh``: configs, scripts,
    CIFAR-10 (fabricated, python layout, 5,100 training images so the configs' 5,000-image
    validation split fits) at ``data/`` and ``data/cifar10-jpeg/``, and one finished run."""
    root = tmp_path_factory.mktemp("clone")
    for name in ("configs", "scripts"):
        (root / name).symlink_to(ROOT / name)
    (root / "docs").mkdir()
    write_python_layout(root / "data", n_train=5100, n_test=40)
    (root / "data" / "cifar10-jpeg").symlink_to(root / "data")
    first = ["fit", "--config", LENET, "--trainer.max_epochs", "1"]
    small = ["--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    done = subprocess.run(
        [GROUPWISE, *first, *small, *quiet], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (root / "lightning_logs/version_0/checkpoints/last.ckpt").is_file()
    return root


def runnable(command: str) -> list[str] | None:
    """The argv to run for a documented command, or None for one in ``NOT_RUN``."""
    if any(command == start or command.startswith(start + " ") for start in NOT_RUN):
        return None
    words = shlex.split(command)
    if words[0] == "groupwise":
        words[0] = GROUPWISE
        if words[1] in RUNS and "--print_config" not in words:
            words += ["--trainer.fast_dev_run", "1"]
        return words
    if words[0] in ("python", "python3", ".venv/bin/python"):
        return [sys.executable, *words[1:]]
    raise AssertionError(f"no rule for the documented command {command!r}: run it or list it")


@pytest.mark.slow
@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_runs(workspace, where, command):
    argv = runnable(command)
    if argv is None:
        reason = next(r for start, r in NOT_RUN.items() if command.startswith(start))
        pytest.skip(f"not run: {reason}")
    env = {k: v for k, v in os.environ.items() if k != "GROUPWISE_DEBUG"}
    done = subprocess.run(argv, cwd=workspace, capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{where}: {command}\n{done.stderr[-3000:]}"

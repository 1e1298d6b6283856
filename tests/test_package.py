"""The package a clone gets: every subpackage has a tracked ``__init__.py`` that exports its
public classes (``groupwise.data.CIFAR10DataModule`` in YAML), and nothing in ``src/`` is
ignored by git (a ``data/`` ignore pattern once dropped ``src/groupwise/data/__init__.py``
from every clone)."""

from __future__ import annotations

import importlib
import subprocess

import pytest
from cli_run import ROOT

SRC = ROOT / "src" / "groupwise"
SUBPACKAGES = sorted(p.parent for p in SRC.glob("*/**/*.py") if p.parent != SRC)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_source_file_is_ignored_by_git():
    ignored = git("ls-files", "--others", "--ignored", "--exclude-standard", "src")
    assert [line for line in ignored.splitlines() if line.endswith(".py")] == []


@pytest.mark.parametrize("folder", sorted(set(SUBPACKAGES)), ids=lambda p: p.name)
def test_every_subpackage_has_an_init(folder):
    assert (folder / "__init__.py").is_file()


@pytest.mark.parametrize(
    "path",
    [
        "groupwise.data.CIFAR10DataModule",
        "groupwise.callbacks.FreezeGroups",
        "groupwise.optim.WarmupLinearLR",
        "groupwise.optim.Muon",
        "groupwise.nets.FastNet",
        "groupwise.nets.AirbenchNet",
        "groupwise.callbacks.WhiteningInit",
    ],
)
def test_yaml_class_paths_import(path):
    module, _, name = path.rpartition(".")
    assert hasattr(importlib.import_module(module), name)


def project_imports(path) -> set[str]:
    """The ``groupwise...`` modules a source file imports."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("groupwise"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("groupwise")}
    return found


TOP = ("groupwise.cli", "groupwise.classifier", "groupwise.trainer", "groupwise.plan")

# What a user meets first; everything else lives in a subpackage named for its role.
TOP_LEVEL = {"__init__", "__main__", "classifier", "errors", "plan", "trainer"}


def test_the_top_level_holds_what_a_user_meets_first():
    """``cli`` is a package of the CLI's pieces; every other module is in a subpackage
    named for its role (docs/layout.md)."""
    assert {p.stem for p in SRC.glob("*.py")} == TOP_LEVEL
    assert (SRC / "cli" / "__init__.py").is_file()


@pytest.mark.parametrize(
    "path",
    sorted(p for p in SRC.glob("*/*.py") if p.parent.name != "cli"),
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_subpackages_import_nothing_above_them(path):
    """Dependencies run one way: ``cli`` -> ``trainer``, ``classifier`` -> the subpackages;
    nothing below imports ``cli``, ``classifier``, ``trainer`` or ``plan``."""
    assert [m for m in project_imports(path) if m.startswith(TOP)] == []


@pytest.mark.parametrize("path", sorted(SRC.glob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_only_the_cli_and_plan_import_the_cli(path):
    """The classifier and the trainer are the CLI's parts, not its users; ``plan`` runs the
    CLI without training and ``__main__`` is ``groupwise.cli.main``."""
    users = {"plan.py", "__main__.py"}
    imports_cli = any(m.startswith("groupwise.cli") for m in project_imports(path))
    assert imports_cli == (path.name in users)


@pytest.mark.parametrize(
    "path",
    sorted((SRC / "runtime").glob("*.py")) + sorted((SRC / "metrics").glob("*.py")),
    ids=lambda p: str(p.relative_to(SRC)),
)
def test_runtime_and_metrics_import_only_themselves_and_errors(path):
    """The process-level settings and the metrics are building blocks: they import nothing
    of the project but their own room and ``errors``."""
    room = f"groupwise.{path.parent.name}"
    others = [m for m in project_imports(path) if m != room and not m.startswith(room + ".")]
    assert [m for m in others if m != "groupwise.errors"] == []


def test_errors_imports_nothing_of_the_project():
    assert project_imports(SRC / "errors.py") == set()

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
    ],
)
def test_yaml_class_paths_import(path):
    module, _, name = path.rpartition(".")
    assert hasattr(importlib.import_module(module), name)

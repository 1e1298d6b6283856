"""A file of ``scripts/`` imported as a module in tests (``scripts/`` is not a package):
``port = script_module("airbench94_cpu")``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script_module(name: str) -> ModuleType:
    """``scripts/NAME.py`` as the module ``NAME``, registered in ``sys.modules`` (dataclasses
    and pickling look modules up by name; a second call returns the same module)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

"""Print a pip constraints file that pins every dependency of pyproject.toml to its lower
bound (``name>=X`` -> ``name==X``), for ``scripts/test_lower_bounds.sh``.

Only ``[project].dependencies`` are pinned (not the dev tools). A dependency without a
``>=`` bound is an error: every bound must be one that CI installs and tests.
"""

import re
import sys
from pathlib import Path

import tomllib

REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([^,;\s]+)\s*$")


def lower_bounds(pyproject: Path) -> list[str]:
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for requirement in dependencies:
        match = REQUIREMENT.match(requirement)
        if match is None:
            sys.exit(f"{pyproject}: {requirement!r} has no single '>=' lower bound")
        pins.append(f"{match[1]}=={match[3]}")
    return pins


if __name__ == "__main__":
    print("\n".join(lower_bounds(Path(__file__).resolve().parents[1] / "pyproject.toml")))

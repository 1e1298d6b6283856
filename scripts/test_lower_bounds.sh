#!/usr/bin/env bash
# The quick tests on the lowest versions pyproject.toml allows: a second environment,
# .venv-lower, with every dependency pinned to its lower bound (scripts/lower_bounds.py),
# so each bound names a version CI has run. Extra arguments go to pytest.
# PYTHON picks the interpreter (default python3, >= 3.11 for tomllib).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv-lower
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" scripts/lower_bounds.py > "$VENV/constraints.txt"
echo "lower bounds:" $(cat "$VENV/constraints.txt")
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c "$VENV/constraints.txt" -e ".[dev]"
"$VENV/bin/pytest" "$@"

#!/usr/bin/env bash
# Create .venv (if missing) and install groupwise with its dev tools into it.
# PYTHON picks the interpreter (default python3, which must be >= 3.10).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "groupwise needs Python >= 3.10; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"

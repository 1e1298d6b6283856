#!/usr/bin/env bash
# Set up .venv, lint and format-check with ruff, then run pytest.
# Extra arguments go to pytest. The quick suite skips tests marked `slow`;
# `bash scripts/test.sh -m "slow or not slow"` runs everything (as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pytest "$@"

#!/usr/bin/env bash
# What the PostgreSQL test of `groupwise sweep` needs (tests/test_sweep_slow.py): Debian's
# postgresql server (initdb, pg_ctl; it also makes the unprivileged `postgres` user the
# server runs as) and the psycopg2 driver in the given Python environment. Run as root
# (CI is); the test starts its own server on 127.0.0.1 in a temporary folder.
# Usage: bash scripts/postgres_for_tests.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check "psycopg2-binary>=2.9"

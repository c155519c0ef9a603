#!/usr/bin/env bash
# Set up (dev) and run the test suite: lint, types, fast tests, then the bounded slow tests.
# Services the tests need (PostgreSQL, Chromium) are installed and started by the project's own scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev

mkdir -p .cache
export ADAPTERHUB_CACHE=${ADAPTERHUB_CACHE:-$PWD/.cache/adapterhub}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Services the hub tests need, from Debian's packages (installed here if absent; the tests start them on loopback).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "[test] installing PostgreSQL (Debian package postgresql)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } > .cache/apt-postgresql.log 2>&1 \
        || echo "[test] PostgreSQL could not be installed (see .cache/apt-postgresql.log); its tests will skip"
fi
bash scripts/browser/install_chromium.sh > .cache/apt-chromium.log 2>&1 \
    || echo "[test] Chromium could not be installed (see .cache/apt-chromium.log); browser tests will skip"
# The `adapters` library in its own venv (transformers 4.57.6): tests check it loads what we write.
bash scripts/compat/setup_adapters_venv.sh > .cache/adapters-venv.log 2>&1 || {
    echo "[test] could not set up .venv-adapters (see .cache/adapters-venv.log); its tests will skip"; }

echo "[test] ruff"
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
echo "[test] mypy (core modules)"
.venv/bin/mypy
echo "[test] pytest"
.venv/bin/python -m pytest -q -m "not slow" "$@"
echo "[test] pytest: bounded slow tests"
.venv/bin/python -m pytest -q -m slow "$@" || [[ $? == 5 ]]  # 5: none selected

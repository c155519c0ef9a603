#!/usr/bin/env bash
# Set up (dev) and run the test suite: lint, types, fast tests, then the bounded slow tests.
# Services the tests need (PostgreSQL, Chromium) are installed and started by the project's own scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev

mkdir -p .cache
export ADAPTERHUB_CACHE=${ADAPTERHUB_CACHE:-$PWD/.cache/adapterhub}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
[[ -x scripts/test_services.sh ]] && source scripts/test_services.sh
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

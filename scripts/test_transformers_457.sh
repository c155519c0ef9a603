#!/usr/bin/env bash
# Run the core test suite against transformers 4.57.6 in its own virtual environment (.venv-t457).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv-t457/bin/python ]]; then
    "${PYTHON:-python3}" -m venv .venv-t457
fi
.venv-t457/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv-t457/bin/python -m pip install --quiet --disable-pip-version-check transformers==4.57.6 "safetensors<0.9" tqdm \
    numpy pytest hypothesis "accelerate<2" "matplotlib<4"
.venv-t457/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
.venv-t457/bin/python -m pytest -q -p no:cacheprovider tests/core tests/compat tests/heads tests/composition tests/methods "$@"

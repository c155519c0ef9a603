#!/usr/bin/env bash
# Speed table of docs/composition.md: adapterhub and the `adapters` library (its own venv) in one go, then combined.
# Usage: bash bench/fusion/run_speed.sh [extra speed.py options, e.g. --size base --rounds 3]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bench/fusion/out
mkdir -p "$out"
OMP_NUM_THREADS=2 .venv/bin/python bench/fusion/speed.py --impl adapterhub --out "$out/speed-adapterhub.json" "$@"
if [ -x .venv-adapters/bin/python ]; then
  OMP_NUM_THREADS=2 .venv-adapters/bin/python bench/fusion/speed.py --impl adapters --out "$out/speed-adapters.json" "$@"
  .venv/bin/python bench/fusion/speed.py --combine "$out/speed-adapterhub.json" "$out/speed-adapters.json"
else
  echo "no .venv-adapters (see docs/compat.md); adapterhub only" >&2
  .venv/bin/python bench/fusion/speed.py --combine "$out/speed-adapterhub.json"
fi

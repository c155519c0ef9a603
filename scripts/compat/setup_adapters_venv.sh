#!/usr/bin/env bash
# Create (or reuse) .venv-adapters: a separate virtual environment with the public `adapters`
# library, used only by the compatibility scripts in scripts/compat/. Safe to run repeatedly.
#
#   bash scripts/compat/setup_adapters_venv.sh
#   bash scripts/compat/setup_adapters_venv.sh --trainer   # + accelerate and datasets, for its AdapterTrainer
#                                                        # recipe (bench/train/time_to_accuracy.py)
#
# torch is installed first and on its own: installing adapters/transformers into an environment
# without torch lets pip pick a multi-GB CUDA build. On the project machines pip's configuration
# (find-links) offers the CPU build of torch 2.13.0.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ADAPTERS_VENV:-$ROOT/.venv-adapters}"
PYTHON="${PYTHON:-python3}"

TORCH_SPEC="torch==2.13.0"
ADAPTERS_SPEC="adapters==1.3.0"
TRANSFORMERS_SPEC="transformers==4.57.6"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
VPY="$VENV/bin/python"

installed_version() {
    # prints the installed version of a distribution, or nothing
    "$VPY" - "$1" <<'EOF'
import sys
from importlib import metadata
try:
    print(metadata.version(sys.argv[1]))
except metadata.PackageNotFoundError:
    pass
EOF
}

torch_version="$(installed_version torch)"
if [ "${torch_version%%+*}" != "${TORCH_SPEC#torch==}" ]; then
    "$PIP" install "$TORCH_SPEC"
else
    echo "torch $torch_version already installed"
fi

if [ "$(installed_version adapters)" != "${ADAPTERS_SPEC#adapters==}" ] \
    || [ "$(installed_version transformers)" != "${TRANSFORMERS_SPEC#transformers==}" ] \
    || [ -z "$(installed_version safetensors)" ]; then
    "$PIP" install "$ADAPTERS_SPEC" "$TRANSFORMERS_SPEC" safetensors
else
    echo "adapters $(installed_version adapters), transformers $(installed_version transformers)," \
        "safetensors $(installed_version safetensors) already installed"
fi

if [ "${1:-}" = "--trainer" ]; then
    # AdapterTrainer needs accelerate; its documented recipe tokenises with datasets. huggingface-hub stays at
    # the version transformers 4.57 accepts.
    "$PIP" install "accelerate==1.15.0" "datasets==5.0.1" "huggingface-hub==0.36.2"
fi

"$VPY" -c "import adapters, transformers, torch; print('ok: adapters', adapters.__version__, '| transformers', transformers.__version__, '| torch', torch.__version__)"

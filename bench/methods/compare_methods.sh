#!/usr/bin/env bash
# Every method of adapterhub on one task with the `compare` CLI: dev accuracy, trainable parameters, training
# examples/s against full fine-tuning, peak memory, file size and inference time against the bare model. Real
# encoder, 2 CPU threads, one epoch over a seeded sample of TRAIN_LIMIT (4,000) training rows of rotten_tomatoes
# (or TASK), each method at the CLI's default learning rate
# (adapters 1e-3, full fine-tuning 2e-5). TASK picks another shared task; arguments are passed on to compare.
#   bash bench/methods/compare_methods.sh        # writes bench/methods/results/compare-all-$TASK/compare.{json,md}
#   TASK=multiemo_en bash bench/methods/compare_methods.sh --group-by-length
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
TASK=${TASK:-rotten_tomatoes}
"$PY" -m adapterhub.cli compare --data "$TASK" --train-limit "${TRAIN_LIMIT:-4000}" --threads 2 --epochs 1 \
    --batch-size 32 --max-length 128 --no-progress \
    --methods full adapter:pfeiffer adapter:houlsby adapter:bapna_firat adapter:parallel adapter:compacter \
        "adapter:compacter++" adapter:pfeiffer+inv adapter:lora adapter:dora adapter:ia3 adapter:prefix_tuning \
        adapter:prompt_tuning adapter:mam adapter:unipelt \
        adapter:adalora adapter:loreft adapter:noreft adapter:direft adapter:oft adapter:boft adapter:ln_tuning \
        adapter:loha adapter:lokr adapter:vera \
    --output-dir "bench/methods/results/compare-all-$TASK" "$@"
cat "bench/methods/results/compare-all-$TASK/compare.md"

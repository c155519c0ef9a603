#!/usr/bin/env bash
# The `compare` table on three shared tasks (one multiple choice), bounded to 2,000 training examples each:
# head-only, full fine-tuning, Pfeiffer and Houlsby adapters, real encoder, 2 CPU threads, 1 epoch.
#   bash bench/train/compare_tasks.sh            # writes bench/train/results/compare-<task>/compare.{json,md}
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
for task in rotten_tomatoes social_iqa presuppositions_nli; do
  "$PY" -m adapterhub.cli compare --data "$task" --train-limit 2000 --threads 2 --epochs 1 \
    --batch-size 32 --max-length 128 --no-progress \
    --methods head@1e-3 full@2e-5 "adapter:pfeiffer@1e-3" "adapter:houlsby@1e-3" \
    --output-dir "bench/train/results/compare-$task"
done
cat bench/train/results/compare-*/compare.md

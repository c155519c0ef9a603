#!/usr/bin/env bash
# Issue 34's item 3: SmolLM2 before/after LoRA, prefix tuning and a bottleneck adapter on three instruction sets
# converted from ../shared/data, beside our MiniLM classifier adapters (bottleneck, LoRA) trained and evaluated on
# the same rows: every run takes `--train-limit 96 --dev-limit 64` (the same seeded sample of both splits, since a
# converted folder keeps its source's rows in order). SmolLM2 runs use the decoder demo's defaults (2 epochs,
# lr 2e-3, batch 8); MiniLM runs use `train`'s defaults for a classifier. LoRA runs already in runs/three-sets
# (bench/decoder/three_sets.sh) and completed runs are reused; failed ones run again. The table (bench/decoder/beside_encoder_table.py) checks that the dev
# rows are the same and writes runs/three-sets/beside_encoder.md.
# Usage: bash bench/decoder/beside_encoder.sh [SETS...]   (default: rotten_tomatoes fever presuppositions_nli)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/three-sets}
THREADS=${THREADS:-2}
SETS=("$@")
[[ ${#SETS[@]} -gt 0 ]] || SETS=(rotten_tomatoes fever presuppositions_nli)
done_already() { [[ -f "$1/results.json" ]] && grep -q '"status": "completed"' "$1/results.json"; }
LIMITS=(--train-limit 96 --dev-limit 64 --threads "$THREADS" --no-progress)
for set in "${SETS[@]}"; do
    [[ -d "$DATA/$set" ]] || { echo "no $DATA/$set: this figure needs ../shared/data beside the checkout" >&2; exit 2; }
    [[ -f "$OUT/data/$set/task.json" ]] || .venv/bin/adapterhub data instructions "$DATA/$set" "$OUT/data/$set" --overwrite
    for method in lora prefix_tuning pfeiffer; do
        dir="$OUT/$set"; [[ $method == lora ]] || dir="$OUT/$set-$method"
        done_already "$dir" && continue
        .venv/bin/adapterhub train --kind generation --model smollm2 --method "adapter:$method" --data "$OUT/data/$set" \
            --epochs 2 --lr 2e-3 --batch-size 8 --max-length 256 "${LIMITS[@]}" --output-dir "$dir"
    done
    for method in pfeiffer lora; do
        dir="$OUT/$set-minilm-$method"
        done_already "$dir" && continue
        .venv/bin/adapterhub train --model minilm --method "adapter:$method" --data "$DATA/$set" "${LIMITS[@]}" \
            --output-dir "$dir"
    done
done
.venv/bin/python bench/decoder/beside_encoder_table.py --out "$OUT" --data "$DATA" "${SETS[@]}"

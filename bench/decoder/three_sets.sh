#!/usr/bin/env bash
# SmolLM2 answer accuracy before/after LoRA on three instruction sets converted from ../shared/data (issue 30's and
# 34's figure): each set is converted by `adapterhub data instructions`, then `adapterhub train --kind generation`
# trains LoRA with the decoder demo's defaults (96 train rows, 2 epochs, lr 2e-3, batch 8) and reports
# accuracy_before / accuracy / majority_rate on the first 64 dev rows in runs/three-sets/<set>/results.json.
# Usage: bash bench/decoder/three_sets.sh [SETS...]   (default: rotten_tomatoes fever presuppositions_nli)
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/three-sets}
SETS=("$@")
[[ ${#SETS[@]} -gt 0 ]] || SETS=(rotten_tomatoes fever presuppositions_nli)
for set in "${SETS[@]}"; do
    [[ -d "$DATA/$set" ]] || { echo "no $DATA/$set: this figure needs ../shared/data beside the checkout" >&2; exit 2; }
    .venv/bin/adapterhub data instructions "$DATA/$set" "$OUT/data/$set" --overwrite
    .venv/bin/adapterhub train --kind generation --model smollm2 --method adapter:lora --data "$OUT/data/$set" \
        --train-limit 96 --dev-limit 64 --epochs 2 --lr 2e-3 --batch-size 8 --max-length 256 --threads 2 \
        --no-progress --output-dir "$OUT/$set"
done
.venv/bin/python - "$OUT" "${SETS[@]}" <<'PY'
import json, sys
out, sets = sys.argv[1], sys.argv[2:]
print("| set | accuracy before | accuracy after | majority rate | allowed after |")
print("|---|---:|---:|---:|---:|")
for name in sets:
    r = json.load(open(f"{out}/{name}/results.json"))
    g = r.get("generation", r)
    print(f"| {name} | {g.get('accuracy_before')} | {g.get('accuracy')} | {g.get('majority_rate')} | {g.get('allowed_fraction')} |")
PY

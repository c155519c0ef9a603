"""The table of bench/decoder/beside_encoder.sh: SmolLM2 answer accuracy (base, LoRA, prefix tuning, bottleneck)
beside MiniLM classifier accuracy (bottleneck, LoRA) per set, after checking that every run was evaluated on the
same dev rows (the same seeded sample of the source set and of its converted instruction folder).

Usage: ``python bench/decoder/beside_encoder_table.py [--out runs/three-sets] [--data ../shared/data] SETS...``;
prints the markdown table and writes it to ``OUT/beside_encoder.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from adapterhub.data import load_task

DEV_LIMIT, TRAIN_LIMIT = 64, 96
DECODER_RUNS = {"LoRA": "", "prefix tuning": "-prefix_tuning", "bottleneck": "-pfeiffer"}
ENCODER_RUNS = {"bottleneck": "-minilm-pfeiffer", "LoRA": "-minilm-lora"}


def same_dev_rows(source: Path, converted: Path) -> int:
    """The number of dev rows both runs saw; raises if a converted row does not hold its source row's text."""
    plain = load_task(str(source)).subset(train=TRAIN_LIMIT, dev=DEV_LIMIT, seed=0)
    chat = load_task(str(converted)).subset(train=TRAIN_LIMIT, dev=DEV_LIMIT, seed=0)
    if len(plain.dev) != len(chat.dev):
        raise SystemExit(f"{source}: {len(plain.dev)} dev rows vs {len(chat.dev)} converted rows")
    for a, b in zip(plain.dev, chat.dev, strict=True):
        user = " ".join(m["content"] for m in b.messages or () if m["role"] == "user")
        if a.text not in user or (a.text_pair is not None and a.text_pair not in user):
            raise SystemExit(f"{source}: dev row {a.text[:60]!r} is not the converted row {user[:120]!r}")
    return len(plain.dev)


def read(path: Path) -> dict[str, Any] | None:
    """The run's results, or None where it is absent or did not complete."""
    file = path / "results.json"
    results = json.loads(file.read_text()) if file.exists() else None
    return results if results and results.get("status") == "completed" else None


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/three-sets"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("sets", nargs="+")
    args = parser.parse_args()
    head = ["set", "dev rows", "majority", "SmolLM2 base"]
    head += [f"SmolLM2 {m}" for m in DECODER_RUNS] + [f"MiniLM {m}" for m in ENCODER_RUNS]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name in args.sets:
        rows = same_dev_rows(args.data / name, args.out / "data" / name)
        decoder = {m: read(args.out / f"{name}{suffix}") for m, suffix in DECODER_RUNS.items()}
        encoder = {m: read(args.out / f"{name}{suffix}") for m, suffix in ENCODER_RUNS.items()}
        first = next((r["generation"] for r in decoder.values() if r), {})
        values = [cell(first.get("majority_rate")), cell(first.get("accuracy_before"))]
        values += [cell(r["generation"]["accuracy"]) if r else "-" for r in decoder.values()]
        values += [cell(r["dev_metrics"].get("accuracy")) if r else "-" for r in encoder.values()]
        lines.append(f"| {name} | {rows} | " + " | ".join(values) + " |")
    text = "\n".join(lines)
    (args.out / "beside_encoder.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

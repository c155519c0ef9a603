"""One table of every method over several tasks, from the ``compare.json`` files of ``adapterhub compare``.

    .venv/bin/python bench/methods/compare_tasks.py bench/methods/results/compare-all-rotten_tomatoes \
        bench/methods/results/compare-all-multiemo_en bench/methods/results/compare-all-fever \
        --out bench/methods/results/compare_tasks.md

Per method: trainable parameters and size on disk (from the first task that has the method; they differ between
tasks only by the head's label count), then per task the dev metric, training examples/s against full fine-tuning
(timed in the same run) and inference time against the bare model ("-" where that run did not time inference).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _metric(row: dict[str, Any] | None) -> str:
    if row is None or row["metric"] is None:
        return "-"
    return f"{100 * row['metric']:.2f}" if row["metric_name"] != "mse" else f"{row['metric']:.4f}"


def combined_table(runs: list[dict[str, Any]]) -> str:
    """Markdown: one row per method (in first-seen order), three columns per task."""
    methods: dict[str, dict[str, Any]] = {}
    for run in runs:
        for row in run["rows"]:
            methods.setdefault(row["method"], row)
    header = ["method", "trainable params", "size on disk"]
    for run in runs:
        name = run["task"]["name"]
        header += [f"{name} dev {run['rows'][0]['metric_name']}", f"{name} ex/s vs full", f"{name} inference"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, first in methods.items():
        cells = [method, f"{first['trainable_parameters']:,}", f"{first['saved_size_bytes'] / 2**20:.1f} MB"]
        for run in runs:
            row = next((r for r in run["rows"] if r["method"] == method), None)
            cells += [
                _metric(row),
                _ratio(row and row["speed_vs_full"]),
                _ratio(row and row.get("inference_vs_bare")),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="output directories of adapterhub compare")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    runs = []
    for directory in args.runs:
        path = directory / "compare.json"
        if not path.is_file():
            parser.error(f"{path} does not exist: pass the --output-dir of a finished adapterhub compare run")
        runs.append(json.loads(path.read_text(encoding="utf-8")))
    table = combined_table(runs)
    print(table, end="")
    if args.out:
        args.out.write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()

"""Baseline (c) of bench/serve/bench.py: the `adapters` library (1.3.0) behind a minimal HTTP server that switches
``set_active_adapters`` for each request and runs one forward pass per request, one request at a time (the active
adapter is state of the shared model, so requests cannot overlap). Runs in the library's own venv:

    .venv-adapters/bin/python bench/serve/adapters_baseline.py --model DIR --port P --adapter NAME=DIR ...

Each DIR holds an adapter with its classification head, as ``save_adapter(..., layout="adapters")`` writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mini_server import Rows, classification, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR")
    args = parser.parse_args()

    from adapters import AutoAdapterModel
    from transformers import AutoTokenizer

    torch.set_grad_enabled(False)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoAdapterModel.from_pretrained(args.model).eval()
    labels: dict[str, list[str]] = {}
    for spec in args.adapter:
        name, directory = spec.split("=", 1)
        model.load_adapter(directory, load_as=name, set_active=False)
        label2id = json.loads((Path(directory) / "head_config.json").read_text())["config"]["label2id"]
        labels[name] = sorted(label2id, key=label2id.__getitem__)

    def predict(rows: Rows) -> list[dict[str, Any]]:
        (adapter,) = {name for name, _ in rows}  # one request: one adapter
        model.set_active_adapters(adapter)  # also activates the head of the same name
        batch = tokenizer([text for _, text in rows], padding=True, truncation=True, return_tensors="pt")
        return classification(model(**batch).logits, labels[adapter])

    serve(predict, list(labels), args.port, batching=False)


if __name__ == "__main__":
    main()

"""Baseline (d) of bench/serve/bench.py: peft's mixed-adapter batches for LoRA. Requests are collected like in our
server (``--max-wait-ms``, ``--max-batch-rows``) and run as one forward pass of a ``PeftModel`` with
``adapter_names=[one adapter per row]``; each row's classification head (first token -> Linear -> tanh -> Linear,
peft holds no per-adapter head for a bare encoder) is applied by hand from the head file we saved.

    .venv/bin/python bench/serve/peft_baseline.py --model DIR --port P --adapter NAME=PEFT_DIR:HEAD_DIR ...

PEFT_DIR: ``save_adapter(..., layout="peft", with_head=False)``; HEAD_DIR: our own layout (``head.safetensors``,
``head_config.json``).
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


def load_head(directory: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    from safetensors.torch import load_file

    config = json.loads((Path(directory) / "head_config.json").read_text())
    if config["type"] != "classification" or config["config"]["layers"] != 2:
        raise SystemExit(f"{directory}: only 2-layer classification heads are served here")
    id2label = config["id2label"]
    return load_file(str(Path(directory) / "head.safetensors")), [
        id2label[str(i)] for i in range(len(id2label))
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PEFT_DIR:HEAD_DIR")
    parser.add_argument("--max-batch-rows", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()

    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    torch.set_grad_enabled(False)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    base = AutoModel.from_pretrained(args.model).eval()
    model: Any = None
    heads: dict[str, tuple[dict[str, torch.Tensor], list[str]]] = {}
    for spec in args.adapter:
        name, dirs = spec.split("=", 1)
        peft_dir, head_dir = dirs.split(":", 1)
        if model is None:
            model = PeftModel.from_pretrained(base, peft_dir, adapter_name=name)
        else:
            model.load_adapter(peft_dir, adapter_name=name)
        heads[name] = load_head(head_dir)
    model.eval()

    def predict(rows: Rows) -> list[dict[str, Any]]:
        names = [name for name, _ in rows]
        batch = tokenizer([text for _, text in rows], padding=True, truncation=True, return_tensors="pt")
        first = model(**batch, adapter_names=names).last_hidden_state[:, 0]  # (rows, d)
        out = []
        for row, name in zip(first, names):
            weights, labels = heads[name]
            hidden = torch.tanh(row @ weights["layers.1.weight"].T + weights["layers.1.bias"])
            logits = hidden @ weights["layers.4.weight"].T + weights["layers.4.bias"]
            out.extend(classification(logits[None], labels))
        return out

    serve(
        predict,
        list(heads),
        args.port,
        batching=True,
        max_batch_rows=args.max_batch_rows,
        max_wait_ms=args.max_wait_ms,
    )


if __name__ == "__main__":
    main()

"""AdapterDrop speed: inference time with the adapters of the first k layers skipped (``skip_layers``), against the
same adapter with no layer skipped and against the bare model, in one run.

    OMP_NUM_THREADS=2 .venv/bin/python bench/methods/adapter_drop.py            # ~2 minutes on 2 cores
    .venv/bin/python bench/methods/adapter_drop.py --iters 5 --batch 8           # smoke run

Settings: a randomly initialised BERT (``BertConfig``: 6 layers, hidden 256, 4 heads, FFN 1024; the speed does not
depend on the weights), one Pfeiffer adapter (``pfeiffer``: a bottleneck after each FFN, reduction 16), a batch of
``--batch`` (32) rows of ``--tokens`` (128) random token ids, eval mode, ``torch.no_grad``,
``torch.set_num_threads(--threads)`` (2). Configurations: the bare model, and the adapter with
``skip_layers=range(k)`` for each ``k`` in ``--skip`` (0, 3, 5). Every iteration times one forward of each
configuration in turn (the order rotated per iteration, after one warm-up forward each), ``--iters`` (20)
iterations; reported per configuration: the median seconds per forward, and the median over iterations of the
ratio to ``k = 0`` and to the bare model timed in the same iteration (so load from other work mostly cancels).
The machine's load average is recorded before and after. Writes ``--output`` (JSON) and the same path with ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import BertConfig, BertModel

import adapterhub

ROOT = Path(__file__).resolve().parents[2]


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", type=int, nargs="+", default=[0, 3, 5])
    parser.add_argument("--output", type=Path, default=ROOT / "bench/methods/results/adapter_drop.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    )
    model = adapterhub.init(BertModel(config)).eval()
    model.add_adapter("a", "pfeiffer", set_active=True)
    ids = torch.randint(1000, 30000, (args.batch, args.tokens))  # (B, T)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    configs: list[tuple[str, Any, Any]] = [("bare", None, None)] + [
        (f"skip {k}", "a", list(range(k))) for k in args.skip
    ]

    def forward(setup: Any, skip: Any) -> float:
        start = time.perf_counter()
        with torch.no_grad(), model.adapter_setup(setup, skip_layers=skip):
            model(**inputs)
        return time.perf_counter() - start

    before = load()
    for _, setup, skip in configs:  # warm-up
        forward(setup, skip)
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for i in range(args.iters):
        shift = i % len(configs)
        for name, setup, skip in configs[shift:] + configs[:shift]:
            times[name].append(forward(setup, skip))
    after = load()
    reference = f"skip {args.skip[0]}"
    rows = []
    for name, _, _ in configs:
        rows.append(
            {
                "config": name,
                "median_s": round(statistics.median(times[name]), 4),
                "vs_no_skip": round(
                    statistics.median(t / r for t, r in zip(times[name], times[reference], strict=True)), 3
                ),
                "vs_bare": round(
                    statistics.median(t / r for t, r in zip(times[name], times["bare"], strict=True)), 3
                ),
            }
        )
    result = {
        "settings": {
            "model": "BertModel(6 layers, hidden 256, 4 heads, FFN 1024), random init",
            "adapter": "pfeiffer",
            "batch": args.batch,
            "tokens": args.tokens,
            "threads": args.threads,
            "iters": args.iters,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        },
        "load_before": before,
        "load_after": after,
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"AdapterDrop, {result['settings']['model']}, pfeiffer, batch {args.batch} x {args.tokens} tokens, "
        f"{args.threads} threads, median of {args.iters} forwards; load {before['1min']} -> {after['1min']}",
        "",
        "| config | median s / forward | vs no skip | vs bare |",
        "|---|---|---|---|",
        *(f"| {r['config']} | {r['median_s']} | {r['vs_no_skip']} | {r['vs_bare']} |" for r in rows),
    ]
    markdown = "\n".join(lines) + "\n"
    args.output.with_suffix(".md").write_text(markdown)
    print(markdown)
    return result


if __name__ == "__main__":
    main()

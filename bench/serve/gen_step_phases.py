"""Where a generation-engine step spends its time: the staggered run of ``gen_engine_profile`` (stream ``i`` joins
at step ``i``) with wall-clock timers around each part of the step, on a tiny random Llama or SmolLM2 (float32).

Parts (disjoint; each timer wraps the functions named, so the parts add up to the step):

- ``linear``: the model's own projections (``nn.Linear.forward`` of every layer but the LM head: the base matmuls);
- ``lm_head``: the LM head (``logits_to_keep`` rows only);
- ``attention``: the engine's attention per slot (``gen_slot_attention.slot_attention``; a dense-mask step's
  attention, the model's own SDPA, falls in ``model_other``);
- ``kv_cache``: ``SlotCache.update`` (the new keys / values written into the pool, the pool's buffers handed on);
- ``hooks``: adapterhub's forward hooks on the model (the interpreter and the adapters they run, e.g. LoRA);
- ``model_other``: the rest of the model's forward (norms, rotary, activations, residual adds, transformers' Python);
- ``engine``: ``GenerationEngine.step`` outside the model's forward (scheduler, ``build_packed_step`` /
  ``build_step``, penalties, argmax, accept / stream).

Usage: ``python bench/serve/gen_step_phases.py [--model tiny|smollm2] [--packed] [--adapters N] [--streams 16]
[--new 32] [--threads 1] [--repeat 2]``. Shares only on a busy machine (the timers add ~1 us per call).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from gen_engine_bench import add_loras  # type: ignore[import-not-found]
from gen_engine_profile import build_model, run  # type: ignore[import-not-found]
from torch import nn

import adapterhub
from adapterhub.runtime.injection import AdapterHook
from adapterhub.serving import gen_engine
from adapterhub.serving import gen_slot_attention as slot_attention
from adapterhub.serving.kv_cache import SlotCache

SPENT: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)
_MISSING = object()
_STACK: list[str] = []  # the part running now (innermost last): time is charged to the innermost part only


def _enter(part: str) -> float:
    now = time.perf_counter()
    if _STACK:
        SPENT[_STACK[-1]] += now
    _STACK.append(part)
    CALLS[part] += 1
    return now


def _leave(part: str, start: float) -> None:
    now = time.perf_counter()
    SPENT[part] += now - start
    _STACK.pop()
    if _STACK:
        SPENT[_STACK[-1]] -= now


def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` charging its own time (less the time of the parts it calls) to ``part``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = _enter(part)
        try:
            return fn(*args, **kwargs)
        finally:
            _leave(part, start)

    return wrapper


@contextmanager
def instrumented(model: Any) -> Iterator[None]:
    """Timers around the parts of a step (module docstring), removed on exit."""
    head = model.get_output_embeddings()
    linear_forward = nn.Linear.forward

    def linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        part = "lm_head" if module is head else "linear"
        start = _enter(part)
        try:
            return linear_forward(module, x)
        finally:
            _leave(part, start)

    patches: list[tuple[Any, str, Any]] = [
        (nn.Linear, "forward", linear),
        (slot_attention, "slot_attention", timed("attention", slot_attention.slot_attention)),
        (SlotCache, "update", timed("kv_cache", SlotCache.update)),
        (type(model), "__call__", timed("model_other", type(model).__call__)),
        (gen_engine.GenerationEngine, "step", timed("engine", gen_engine.GenerationEngine.step)),
    ]
    hooks = [h for m in model.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
    for kind in {type(h) for h in hooks if isinstance(h, AdapterHook)}:
        for owner in kind.__mro__:  # the class that defines the __call__ the hook runs
            if "__call__" in owner.__dict__:
                patches.append((owner, "__call__", timed("hooks", owner.__dict__["__call__"])))
                break
    patches = list({(id(owner), name): (owner, name, value) for owner, name, value in patches}.values())
    saved = [(owner, name, owner.__dict__.get(name, _MISSING)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            if value is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--adapters", type=int, default=0)
    parser.add_argument("--packed", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, pool = build_model(args.model)
    adapterhub.init(model)
    names = add_loras(model, args.adapters)
    prompts = pool[: args.streams]
    adapters = [names[(2 * i) % len(names)] if names else None for i in range(len(prompts))]
    run(model, prompts[:2], adapters[:2], 2, args.packed)  # warm-up
    best: dict[str, float] | None = None
    steps = 0
    for _ in range(args.repeat):
        SPENT.clear()
        CALLS.clear()
        with instrumented(model):
            start = time.perf_counter()
            steps, _ = run(model, prompts, adapters, args.new, args.packed)
            total = time.perf_counter() - start
        if best is None or total < best["total"]:
            best = {**SPENT, "total": total}
    assert best is not None
    mode = "packed" if args.packed else "rows"
    print(
        f"{args.model} {mode} streams={len(prompts)} new={args.new} adapters={args.adapters} threads={args.threads}: "
        f"{steps} steps, {1000 * best['total'] / steps:.2f} ms/step (best of {args.repeat})"
    )
    print("| part | ms/step | share |")
    print("|---|---:|---:|")
    parts = ["linear", "lm_head", "attention", "kv_cache", "hooks", "model_other", "engine"]
    for part in parts:
        ms = 1000 * best.get(part, 0.0) / steps
        print(f"| {part} | {ms:.2f} | {100 * best.get(part, 0.0) / best['total']:.1f}% |")
    rest = best["total"] - sum(best.get(p, 0.0) for p in parts)
    print(
        f"| outside step() (submit, stats) | {1000 * rest / steps:.2f} | {100 * rest / best['total']:.1f}% |"
    )


if __name__ == "__main__":
    main()

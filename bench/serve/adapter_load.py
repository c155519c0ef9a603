"""Time to load one saved adapter into a serving model, the way ``adapterhub serve-model`` loads an adapter that is
not resident (``AdapterRegistry._load_once``), per phase:

- ``prepare``: ``sources.fetch`` + ``sources.prepare`` (read the folder, check it against the model, build the
  method's modules, load and place their tensors): on the server's I/O thread, beside the decoding steps, but
  holding the GIL against them for the Python it runs;
- ``install``: ``registry._swap_in`` (evict the previous adapter, put this one in): on the model thread;
- ``entry``: ``registry._entry`` (sizes and the SHA-256 ``weights_hash``): on the I/O thread.

Each is reported as wall time (``ms_per_load``) and as CPU time of the loading thread (``cpu_ms_per_load``: what
a busy shared machine inflates least; a load's Python part holds the GIL against the server's step thread).

Each load takes the next of the adapter folders under ``--adapters`` (default: the 1,000 SmolLM2 LoRAs that
``openai_load.py`` writes, r 8 on q/v) as a new name and evicts the one before, so every load is a cold one, as in
``openai_load``'s ``registered_all`` phase. ``--tiny`` times a tiny random Llama with LoRAs of the same kind written
into ``--work`` instead (a dry run).

``--baseline-src DIR`` times another checkout's ``src`` too (e.g. main before a change: ``git archive <commit> src |
tar -x -C /tmp/base``, then ``--baseline-src /tmp/base/src``), alternating the two in child processes for
``--rounds`` rounds, and reports current / baseline per phase (compare ratios: a shared machine's absolute times
drift). ``--profile`` prints the cProfile of the timed loads (top functions by cumulative time).

Usage: ``python bench/serve/adapter_load.py [--loads 40] [--baseline-src /tmp/base/src] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ADAPTERHUB_CACHE", ROOT / ".cache" / "adapterhub"))
PHASES = ("prepare", "install", "entry")


def smollm2_dir() -> Path:
    """The float SmolLM2-135M-Instruct copy in the cache (``scripts/setup.sh`` makes it)."""
    found = sorted((CACHE / "models").glob("smollm2-135m-instruct*"))
    if not found:
        raise SystemExit(f"no SmolLM2 copy under {CACHE / 'models'}; pass --model DIR or --tiny")
    return found[-1]


def tiny_model_dir(work: Path) -> Path:
    """A tiny random Llama (2 layers, width 64) saved under ``work`` once."""
    import torch
    import transformers

    folder = work / "tiny_llama"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        config = transformers.LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
        )
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return folder


def write_loras(model: Any, folder: Path, count: int) -> list[Path]:
    """``count`` LoRA folders (r 8 on q and v, B ~ N(0, 0.02), as ``openai_load.py`` writes) under ``folder``."""
    import torch

    folders = [folder / f"lora{i:04d}" for i in range(count)]
    if all((f / "adapter_config.json").exists() for f in folders):
        return folders
    model.add_adapter("lora", "lora")
    generator = torch.Generator().manual_seed(1)
    params = [p for k, p in model._store.adapters["lora"].named_parameters() if "lora_B" in k]
    for path in folders:
        with torch.no_grad():
            for param in params:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        model.save_adapter(str(path), "lora")
    model.delete_adapter("lora")
    return folders


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Load ``args.loads`` adapters one after another (after ``args.warmup`` untimed ones): ms per load and phase."""
    import torch
    import transformers

    import adapterhub
    from adapterhub.serving import registry, sources

    torch.set_num_threads(1)
    model_dir = tiny_model_dir(args.work) if args.tiny else Path(args.model or smollm2_dir())
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    adapterhub.init(model)
    if args.tiny:
        folders = write_loras(model, args.work / "tiny_loras", args.loads + args.warmup)
    else:
        adapters = Path(args.adapters or CACHE / "bench_openai_load")
        folders = sorted(p for p in adapters.iterdir() if (p / "adapter_config.json").exists())
        if not folders:
            raise SystemExit(f"no adapter folders under {adapters} (run openai_load.py once, or pass --tiny)")
    times: dict[str, list[float]] = {phase: [] for phase in PHASES}
    cpu: dict[str, list[float]] = {phase: [] for phase in PHASES}
    profile = cProfile.Profile() if args.profile else None
    previous: list[str] = []
    for i in range(args.warmup + args.loads):
        timed = i >= args.warmup
        source = sources.parse_source(str(folders[i % len(folders)]))
        name = f"a{i}"
        if timed and profile is not None:
            profile.enable()
        start, start_cpu = time.perf_counter(), time.thread_time()
        fetched = sources.fetch(source, model)
        prepared = sources.prepare(source, fetched, model, name)
        prepared_at, prepared_cpu = time.perf_counter(), time.thread_time()
        adapter, head = registry._swap_in(model, previous, source, fetched, prepared, name)
        installed_at, installed_cpu = time.perf_counter(), time.thread_time()
        registry._entry(name, source, adapter, head)
        done, done_cpu = time.perf_counter(), time.thread_time()
        if timed and profile is not None:
            profile.disable()
        previous = [name]
        if timed:
            times["prepare"].append(prepared_at - start)
            times["install"].append(installed_at - prepared_at)
            times["entry"].append(done - installed_at)
            cpu["prepare"].append(prepared_cpu - start_cpu)
            cpu["install"].append(installed_cpu - prepared_cpu)
            cpu["entry"].append(done_cpu - installed_cpu)
    out: dict[str, Any] = {
        "model": str(model_dir),
        "adapterhub": str(Path(adapterhub.__file__).parent),
        "loads": args.loads,
        "ms_per_load": {p: round(1e3 * statistics.fmean(v), 3) for p, v in times.items()},
        "cpu_ms_per_load": {p: round(1e3 * statistics.fmean(v), 3) for p, v in cpu.items()},
    }
    for key in ("ms_per_load", "cpu_ms_per_load"):
        out[key]["total"] = round(sum(out[key].values()), 3)
    if profile is not None:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(args.profile_top)
        out["profile"] = text.getvalue()
    return out


def child(args: argparse.Namespace, src: Path) -> dict[str, Any]:
    """``measure`` in a child process importing adapterhub from ``src``."""
    command = [sys.executable, __file__, "--worker", "--loads", str(args.loads), "--warmup", str(args.warmup)]
    command += ["--work", str(args.work), "--profile-top", str(args.profile_top)]
    if args.tiny:
        command.append("--tiny")
    if args.model:
        command += ["--model", str(args.model)]
    if args.adapters:
        command += ["--adapters", str(args.adapters)]
    if args.profile:
        command.append("--profile")
    env = os.environ | {"PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"the worker for {src} failed:\n{result.stderr[-3000:]}")
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="causal LM folder (default: the cached SmolLM2 copy)")
    parser.add_argument("--adapters", type=Path, help="folder of adapter folders (default: openai_load's)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random Llama and LoRAs (dry run)")
    parser.add_argument("--work", type=Path, default=CACHE / "bench_adapter_load")
    parser.add_argument("--loads", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternations with --baseline-src")
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src to compare with")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-top", type=int, default=30)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(measure(args)))
        return
    sources = {"current": ROOT / "src"}
    if args.baseline_src is not None:
        sources = {"baseline": args.baseline_src.resolve(), **sources}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in sources}
    for _ in range(args.rounds if args.baseline_src is not None else 1):
        for label, src in sources.items():
            runs[label].append(child(args, src))
    result: dict[str, Any] = {"model": runs["current"][0]["model"], "loads": args.loads}
    for label, done in runs.items():
        result[label] = {
            key: {p: round(statistics.median(r[key][p] for r in done), 3) for p in (*PHASES, "total")}
            for key in ("ms_per_load", "cpu_ms_per_load")
        }
        for key, values in result[label].items():
            shown = ", ".join(f"{p} {v}" for p, v in values.items())
            print(f"{label:9s} {key:15s} {shown}   ({sources[label]})")
        if args.profile:
            print(done[-1]["profile"])
    if "baseline" in result:
        result["ratio_current_over_baseline"] = {
            key: {p: round(v / result["baseline"][key][p], 3) for p, v in values.items()}
            for key, values in result["current"].items()
        }
        for key, ratios in result["ratio_current_over_baseline"].items():
            print(f"current / baseline {key:15s} " + json.dumps(ratios))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

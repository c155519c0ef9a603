"""Bounded load test of the hub on loopback: requests/s and latency percentiles for resolve and download.

    python bench/hub/load.py --backend both --duration 10 --concurrency 8

Starts its own server process (``adapterhub hub serve`` on 127.0.0.1, one worker) for each backend: ``sqlite``
(embedded: SQLite file + local folder) and ``postgres`` (PostgreSQL from $ADAPTERHUB_TEST_POSTGRES_URL or
scripts/hub/start_postgres.sh, blobs in a local folder so that the database is what differs). Publishes a few small
adapters, then runs each phase for at most --duration seconds and at most --max-requests requests, and stops.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_adapter(path: Path, name: str, seed: int, hidden: int = 32, layers: int = 2) -> Path:
    import torch
    from safetensors.torch import save_file

    from adapterhub.spec.configs import canonical_json, resolve_config

    config = resolve_config("pfeiffer[reduction_factor=8]").to_dict()
    path.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    m = hidden // 8
    tensors = {}
    for i in range(layers):
        tensors[f"layers.{i}.ffn.down.weight"] = torch.randn(m, hidden, generator=g)
        tensors[f"layers.{i}.ffn.down.bias"] = torch.zeros(m)
        tensors[f"layers.{i}.ffn.up.weight"] = torch.randn(hidden, m, generator=g)
        tensors[f"layers.{i}.ffn.up.bias"] = torch.zeros(hidden)
    save_file(tensors, str(path / "adapter.safetensors"))
    (path / "adapter_config.json").write_text(
        json.dumps(
            {
                "format": "adapterhub.adapter",
                "format_version": 1,
                "library_version": "bench",
                "name": name,
                "config": config,
                "config_hash": hashlib.sha256(canonical_json(config).encode()).hexdigest(),
                "model_type": "bert",
                "model_name": "bench-bert",
                "hidden_size": hidden,
                "num_layers": layers,
                "has_head": False,
            }
        )
    )
    return path


def server_entry() -> list[str]:
    try:
        try:
            from adapterhub.io import inspect_adapter_dir
        except ImportError:
            from adapterhub.io.manifest import inspect_adapter_dir  # noqa: F401
        return [sys.executable, "-m", "adapterhub.cli"]
    except ImportError:  # until the library's inspect_adapter_dir exists, use the tests' stand-in
        return [sys.executable, str(REPO / "tests" / "hub" / "serve_for_tests.py")]


def start_server(db: str, storage: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [
            *server_entry(),
            "hub",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            db,
            "--storage",
            storage,
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=open(log, "ab"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited; see {log}")
        try:
            urllib.request.urlopen(url + "/api/v1/health", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not start")


def run_phase(url: str, paths: list[str], duration: float, concurrency: int, max_requests: int) -> dict:
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = [0]
    deadline = time.monotonic() + duration

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine: list[float] = []
        i = k
        while time.monotonic() < deadline:
            with lock:
                if counter[0] >= max_requests:
                    break
                counter[0] += 1
            path = paths[i % len(paths)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors[0] += 1
            except (OSError, http.client.HTTPException):
                errors[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    pct = lambda q: latencies[min(n - 1, int(q * n))] * 1000 if n else float("nan")  # noqa: E731
    return {
        "requests": n,
        "errors": errors[0],
        "seconds": round(elapsed, 2),
        "rps": round(n / elapsed, 1),
        "p50_ms": round(pct(0.50), 2),
        "p99_ms": round(pct(0.99), 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if n else None,
    }


def bench_backend(kind: str, args: argparse.Namespace, work: Path) -> dict:
    from adapterhub.hub import client
    from adapterhub.hub.server import service
    from adapterhub.hub.server.app import open_hub
    from adapterhub.hub.server.settings import HubSettings

    pg_dir = None
    if kind == "sqlite":
        db = f"sqlite:///{work / 'hub.sqlite3'}"
    else:
        base = os.environ.get("ADAPTERHUB_TEST_POSTGRES_URL")
        if not base:
            pg_dir = Path(f"/tmp/adapterhub-pg-bench-{uuid.uuid4().hex[:8]}")
            out = subprocess.run(
                ["bash", str(REPO / "scripts/hub/start_postgres.sh"), "--dir", str(pg_dir)],
                capture_output=True,
                text=True,
                check=True,
            )
            base = out.stdout.strip().splitlines()[-1]
        import psycopg

        name = "bench_" + uuid.uuid4().hex[:8]
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        db = base.rsplit("/", 1)[0] + "/" + name
    storage = str(work / f"storage-{kind}")
    hub = open_hub(HubSettings(db_url=db, storage_url=storage))
    with hub.sessions() as s, s.begin():
        service.seed_taxonomy(s, json.loads((REPO / "src/adapterhub/hub/seed.json").read_text()))
        user = service.create_owner(s, "bench")
        token = service.create_token(s, user)
    hub.engine.dispose()
    proc, url = start_server(db, storage, work / f"server-{kind}.log")
    try:
        subtasks = ["sst-2", "imdb", "rotten_tomatoes", "mnli", "rte"]
        archives = []
        for i, sub in enumerate(subtasks):
            task = "sentiment" if i < 3 else "nli"
            d = write_adapter(work / f"{kind}-a{i}", f"bench-{sub.replace('_', '-')}", seed=i)
            out = client.push_adapter_dir(
                d, owner="bench", task=task, subtask=sub, metrics={"accuracy": 0.9}, token=token, hub_url=url
            )
            archives.append(out["archive_url"])
        resolve_paths = [
            "/api/v1/resolve?"
            + urllib.parse.urlencode(
                {"identifier": ident, "model_type": "bert", "model_name": "bench-bert", "hidden_size": 32}
            )
            for ident in [f"{s}@bench" for s in subtasks]
            + subtasks
            + ["@bench/bench-sst-2", "nli/mnli@bench:1"]
        ]
        result = {"backend": kind, "archive_bytes": len(urllib.request.urlopen(url + archives[0]).read())}
        run_phase(url, resolve_paths, 1.0, args.concurrency, 200)  # warm-up
        result["resolve"] = run_phase(url, resolve_paths, args.duration, args.concurrency, args.max_requests)
        result["download"] = run_phase(url, archives, args.duration, args.concurrency, args.max_requests)
        return result
    finally:
        proc.terminate()
        proc.wait(20)
        if pg_dir is not None:
            subprocess.run(
                ["bash", str(REPO / "scripts/hub/start_postgres.sh"), "--stop", str(pg_dir)],
                capture_output=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase (at most)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--max-requests", type=int, default=20000, help="requests per phase (at most)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.duration = min(args.duration, 60.0)
    work = Path(tempfile.mkdtemp(prefix="adapterhub-bench-"))
    os.environ["ADAPTERHUB_HOME"] = str(work / "home")
    os.environ["ADAPTERHUB_CACHE"] = str(work / "cache")
    results = []
    try:
        for kind in ["sqlite", "postgres"] if args.backend == "both" else [args.backend]:
            r = bench_backend(kind, args, work)
            results.append(r)
            for phase in ("resolve", "download"):
                p = r[phase]
                print(
                    f"{kind:<9} {phase:<9} {p['requests']:>6} req in {p['seconds']:>5}s  {p['rps']:>7} req/s  "
                    f"p50 {p['p50_ms']:>6} ms  p99 {p['p99_ms']:>6} ms  errors {p['errors']}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"concurrency": args.concurrency, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

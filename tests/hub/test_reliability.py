"""Concurrency and crash safety with real server processes: concurrent publishes of one adapter through two server
processes lose no version; concurrent downloads into one cache do not corrupt it; a server killed mid-upload or
between storing the blob and committing the version leaves no partial version, and earlier data stays intact."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hubkit
import pytest

from adapterhub.hub import client
from adapterhub.hub.errors import HubConnectionError, HubError

BOTH = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.slow)], indirect=True
)
MODEL = {"model_type": "bert", "model_name": "tiny-bert", "hidden_size": 32}


def _prepare(backend) -> dict[str, str]:
    from adapterhub.hub.server.app import open_hub
    from adapterhub.hub.server.settings import HubSettings

    hub = open_hub(
        HubSettings(
            db_url=backend.db_url, storage_url=backend.storage_url, s3_endpoint_url=backend.s3_endpoint
        )
    )
    tokens = hubkit.populate_accounts(hub)
    hub.engine.dispose()
    return tokens


def _versions(url: str, owner: str = "alice", name: str = "shared") -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/adapters/{owner}/{name}", timeout=30) as r:
        return json.loads(r.read())["versions"]


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


@BOTH
def test_concurrent_publishes_through_two_processes(backend, tmp_path):
    tokens = _prepare(backend)
    servers = [
        hubkit.start_process_server(
            backend.db_url, backend.storage_url, env=backend.env, log=tmp_path / f"server{i}.log"
        )
        for i in range(2)
    ]
    try:
        urls = [u for _, u in servers]
        dirs = [hubkit.make_adapter_dir(tmp_path / f"a{i}", name="shared", seed=100 + i) for i in range(16)]

        def publish(i: int) -> dict:
            return client.push_adapter_dir(
                dirs[i],
                owner="alice",
                name="shared",
                task="sentiment",
                subtask="sst-2",
                metrics={"accuracy": i / 100},
                token=tokens["alice"],
                hub_url=urls[i % 2],
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(publish, range(16)))
        numbers = sorted(r["version"] for r in results)
        assert numbers == list(range(1, 17)), numbers
        versions = _versions(urls[0])
        assert [v["version"] for v in versions] == list(range(1, 17))
        assert len({v["sha256"] for v in versions}) == 16
        by_number = {r["version"]: r["sha256"] for r in results}
        assert all(by_number[v["version"]] == v["sha256"] for v in versions)

        def download(i: int) -> bool:
            v = versions[i % 16]
            data = _fetch(urls[i % 2] + v["archive_url"])
            return hashlib.sha256(data).hexdigest() == v["sha256"]

        with ThreadPoolExecutor(max_workers=8) as pool:
            assert all(pool.map(download, range(48)))
        detail = json.loads(_fetch(urls[1] + "/api/v1/adapters/alice/shared"))
        assert detail["latest_version"] == 16 and detail["downloads"] == 48
    finally:
        for proc, _ in servers:
            hubkit.stop_process(proc)


_DOWNLOADER = """
import sys, json
from adapterhub.hub import client
path = client.resolve_to_local_dir(sys.argv[1], model_type="bert", model_name="tiny-bert", hidden_size=32,
                                   hub_url=sys.argv[2])
print(path)
"""


def test_concurrent_downloads_share_one_cache(sqlite_env, tmp_path):
    pushed_dir = sqlite_env.adapter_dir(name="shared")
    with hubkit.ThreadServer(sqlite_env.app) as server:
        pushed = client.push_adapter_dir(
            pushed_dir,
            owner="alice",
            task="sentiment",
            subtask="sst-2",
            token=sqlite_env.tokens["alice"],
            hub_url=server.url,
        )
        env = {**os.environ, "PYTHONPATH": str(hubkit.REPO / "src")}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _DOWNLOADER, "sst-2", server.url],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        with ThreadPoolExecutor(max_workers=4) as pool:  # and threads of this process at the same time
            local = list(
                pool.map(
                    lambda _: client.resolve_to_local_dir("sst-2", hub_url=server.url, **MODEL), range(4)
                )
            )
        outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    paths = {Path(o[0].strip()) for o in outs} | set(local)
    assert paths == {client.cached_adapter_dir(pushed["sha256"])}
    path = paths.pop()
    for f in ("adapter_config.json", "adapter.safetensors"):
        assert (path / f).read_bytes() == (pushed_dir / f).read_bytes()
    assert not any(p.name.startswith(".tmp-") for p in path.parent.iterdir())
    assert sqlite_env.client.get("/api/v1/adapters/alice/shared").json()["downloads"] <= 8


def _blob_count(backend) -> int:
    if backend.kind == "sqlite":
        return sum(1 for _ in (Path(backend.storage_url) / "blobs").rglob("*.tar.gz"))
    import boto3

    bucket = backend.storage_url[len("s3://") :].split("/", 1)[0]
    s3 = boto3.client("s3", endpoint_url=backend.s3_endpoint)
    return s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0)


@BOTH
def test_server_killed_mid_upload(backend, tmp_path):
    tokens = _prepare(backend)
    port = hubkit.free_port()
    proc, url = hubkit.start_process_server(
        backend.db_url, backend.storage_url, env=backend.env, port=port, log=tmp_path / "server.log"
    )
    try:
        first = client.push_adapter_dir(
            hubkit.make_adapter_dir(tmp_path / "v1", name="shared", seed=1),
            owner="alice",
            task="sentiment",
            subtask="sst-2",
            token=tokens["alice"],
            hub_url=url,
        )
        assert first["version"] == 1
        # 1. killed while the body is still arriving
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            (
                f"POST /api/v1/adapters/alice/shared/versions HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {tokens['alice']}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 2000000\r\n\r\n"
                '--b\r\nContent-Disposition: form-data; name="archive"; filename="a"\r\n\r\n'
            ).encode()
            + b"\x1f\x8b"
            + b"\0" * 500_000
        )
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        sock.close()
    finally:
        hubkit.stop_process(proc)
    # 2. killed after the blob is stored but before the version row is committed
    blobs_before = _blob_count(backend)
    proc, url = hubkit.start_process_server(
        backend.db_url,
        backend.storage_url,
        port=port,
        env={**backend.env, "ADAPTERHUB_HUB_TEST_PAUSE_BEFORE_COMMIT": "60"},
        log=tmp_path / "server.log",
    )
    errors: list[Exception] = []

    def push() -> None:
        try:
            client.push_adapter_dir(
                hubkit.make_adapter_dir(tmp_path / "v2", name="shared", seed=2),
                owner="alice",
                task="sentiment",
                subtask="sst-2",
                token=tokens["alice"],
                hub_url=url,
            )
        except Exception as error:  # the server dies under it
            errors.append(error)

    thread = threading.Thread(target=push)
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while _blob_count(backend) == blobs_before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _blob_count(backend) == blobs_before + 1, "the blob was never stored"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        thread.join(30)
    finally:
        hubkit.stop_process(proc)
    assert errors and isinstance(errors[0], (HubConnectionError, HubError)), errors
    # restarted: no partial version, version 1 intact, the next publish is version 2
    proc, url = hubkit.start_process_server(
        backend.db_url, backend.storage_url, env=backend.env, log=tmp_path / "server.log"
    )
    try:
        versions = _versions(url)
        assert [v["version"] for v in versions] == [1]
        assert versions[0]["sha256"] == first["sha256"]
        assert hashlib.sha256(_fetch(url + first["archive_url"])).hexdigest() == first["sha256"]
        again = client.push_adapter_dir(
            tmp_path / "v2",
            owner="alice",
            task="sentiment",
            subtask="sst-2",
            token=tokens["alice"],
            hub_url=url,
        )
        assert again["version"] == 2 and again["created"] is True
        assert hashlib.sha256(_fetch(url + again["archive_url"])).hexdigest() == again["sha256"]
    finally:
        hubkit.stop_process(proc)

"""Helpers for the hub tests: small adapter directories and servers on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# Variables that would point a test at a user's real hub, token or cache.
HUB_ENV_VARS = (
    "ADAPTERHUB_OFFLINE",
    "HF_HUB_OFFLINE",
    "ADAPTERHUB_TOKEN",
    "ADAPTERHUB_HUB_URL",
    "ADAPTERHUB_HUB_DB",
    "ADAPTERHUB_HUB_STORAGE",
    "ADAPTERHUB_HUB_MAX_UPLOAD_BYTES",
    "ADAPTERHUB_HUB_WEIGHTS_CHECK",
    "ADAPTERHUB_HUB_TEST_PAUSE_BEFORE_COMMIT",
)


def isolate_environment(mp: Any, tmp: Path) -> None:
    """Clear the hub variables and give the test its own ADAPTERHUB_HOME and ADAPTERHUB_CACHE under ``tmp``."""
    for var in HUB_ENV_VARS:
        mp.delenv(var, raising=False)
    mp.setenv("ADAPTERHUB_HOME", str(tmp / "home"))
    mp.setenv("ADAPTERHUB_CACHE", str(tmp / "cache"))


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def bottleneck_config(reduction_factor: int = 8) -> dict[str, Any]:
    from adapterhub.spec.configs import resolve_config

    return resolve_config(f"pfeiffer[reduction_factor={reduction_factor}]").to_dict()


def make_adapter_dir(
    path: Path,
    *,
    name: str = "demo",
    hidden_size: int = 32,
    num_layers: int = 2,
    model_type: str = "bert",
    model_name: str = "tiny-bert",
    seed: int = 0,
    reduction_factor: int = 8,
    id2label: dict[int, str] | None = None,
    weight_hidden_size: int | None = None,
) -> Path:
    """Write a bottleneck adapter directory in the ``adapterhub`` layout (docs/FORMAT.md)."""
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    config = bottleneck_config(reduction_factor)
    d = weight_hidden_size or hidden_size
    m = max(1, hidden_size // reduction_factor)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(num_layers):
        tensors[f"layers.{i}.ffn.down.weight"] = torch.randn(m, d, generator=g)
        tensors[f"layers.{i}.ffn.down.bias"] = torch.zeros(m)
        tensors[f"layers.{i}.ffn.up.weight"] = torch.randn(d, m, generator=g)
        tensors[f"layers.{i}.ffn.up.bias"] = torch.zeros(d)
    save_file(tensors, str(path / "adapter.safetensors"))
    has_head = id2label is not None
    (path / "adapter_config.json").write_text(
        json.dumps(
            {
                "format": "adapterhub.adapter",
                "format_version": 1,
                "library_version": "0.1.0",
                "name": name,
                "config": config,
                "config_hash": hashlib.sha256(canonical(config).encode()).hexdigest(),
                "model_type": model_type,
                "model_name": model_name,
                "hidden_size": hidden_size,
                "num_layers": num_layers,
                "has_head": has_head,
            },
            indent=1,
        )
    )
    if has_head:
        assert id2label is not None
        from adapterhub.heads import ClassificationHead

        torch.manual_seed(seed)
        head = ClassificationHead(name, hidden_size, len(id2label), id2label=id2label)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path / "head.safetensors"))
        (path / "head_config.json").write_text(
            json.dumps(
                {
                    "format": "adapterhub.head",
                    "format_version": 1,
                    "name": name,
                    "type": "classification",
                    "config": head.options(),
                    "id2label": {str(k): v for k, v in id2label.items()},
                    "model_type": model_type,
                    "hidden_size": hidden_size,
                }
            )
        )
    return path


# ------------------------------------------------------------------------------------------------ servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/v1/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy in {timeout}s")


class ThreadServer:
    """uvicorn in a thread of this process, on 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_healthy(self.url, 30)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def start_process_server(
    db_url: str,
    storage_url: str,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    log: Path | None = None,
) -> tuple[subprocess.Popen, str]:
    """``adapterhub hub serve`` in a child process on 127.0.0.1."""
    port = port or free_port()
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), full_env.get("PYTHONPATH", "")])
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "adapterhub.cli",
            "hub",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            db_url,
            "--storage",
            storage_url,
            "--log-level",
            "warning",
        ],
        env=full_env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 60, proc)
    except Exception:
        stop_process(proc)
        raise
    return proc, url


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def populate_accounts(hub: Any) -> dict[str, str]:
    """Seed the taxonomy; users admin (hub admin), alice, bob; org acme with alice as admin."""
    from adapterhub.hub.cli import SEED_FILE
    from adapterhub.hub.server import service

    with hub.sessions() as s, s.begin():
        service.seed_taxonomy(s, json.loads(SEED_FILE.read_text()))
        tokens = {}
        admin = service.create_owner(s, "admin", is_admin=True)
        tokens["admin"] = service.create_token(s, admin)
        alice = service.create_owner(s, "alice")
        tokens["alice"] = service.create_token(s, alice)
        bob = service.create_owner(s, "bob")
        tokens["bob"] = service.create_token(s, bob)
        org = service.create_owner(s, "acme", kind="org")
        service.add_member(s, org, alice, "admin")
    return tokens

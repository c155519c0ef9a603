"""``adapterhub serve-model`` as a real process on loopback: serves, answers, and stops on SIGTERM after answering
what it holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from adapterhub.cli import build_parser
from adapterhub.hub.embedded import free_port

SRC = Path(__file__).resolve().parents[2] / "src"


def _post(url: str, payload: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_parser_has_serve_model_with_the_issue_options():
    args = build_parser().parse_args(
        [
            "serve-model",
            "--model",
            "m",
            "--adapter",
            "a=dir",
            "--adapter",
            "b=task/sub@me",
            "--max-loaded",
            "3",
        ]
    )
    assert args.adapter == ["a=dir", "b=task/sub@me"] and args.max_loaded == 3
    assert (args.max_batch_rows, args.max_wait_ms, args.host, args.port, args.token) == (
        64,
        5.0,
        "127.0.0.1",
        8080,
        None,
    )


def test_serve_model_process(tiny_bert_dir, adapter_dirs):
    port = free_port()
    command = [
        sys.executable, "-m", "adapterhub.cli", "serve-model", "--model", str(tiny_bert_dir),
        "--adapter", f"cls3={adapter_dirs['cls3']}", "--adapter", f"tag={adapter_dirs['tag']}",
        "--port", str(port), "--token", "t0k", "--max-loaded", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "serve-model did not start"
                time.sleep(0.2)
        status, body = _post(url + "/v1/predict", {"adapter": "cls3", "inputs": ["a good film"]})
        assert status == 200 and body["predictions"][0]["label"] in ("neg", "neu", "pos")
        status, body = _post(url + "/v1/predict", {"adapter": "tags", "inputs": ["x"]})
        assert status == 404 and "'tag'" in body["detail"]
        status, _ = _post(url + "/v1/adapters", {"name": "x", "source": str(adapter_dirs["reg"])})
        assert status == 401
        with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
            assert b"adapterhub_requests_total" in response.read()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    # uvicorn shuts down gracefully (lifespan end: queued requests answered), then re-raises the signal
    assert process.returncode in (0, -signal.SIGTERM), output
    assert f"at http://127.0.0.1:{port}" in output and "Application shutdown complete" in output

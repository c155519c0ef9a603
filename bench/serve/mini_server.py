"""The HTTP front of the baseline servers (c) and (d) of bench/serve/bench.py: standard library only, so that the
same file runs in the `adapters` library's venv and in ours.

``serve(predict, adapters, port, batching=...)`` answers ``POST /v1/predict`` ``{"adapter": NAME, "inputs":
[text, ...]}`` with ``{"adapter": NAME, "predictions": [{"label", "scores"}, ...]}`` (the shape our server gives)
and ``GET /health``. ``predict(rows)`` takes ``[(adapter, text), ...]`` and returns one prediction per row.

- ``batching=False``: one ``predict`` call per request, one at a time (a lock: the model is shared).
- ``batching=True``: a collector thread takes the requests that arrive within ``max_wait_ms`` of the first one (at
  most ``max_batch_rows`` rows) and answers them with one ``predict`` call, the same policy as our scheduler.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Rows = Sequence[tuple[str, str]]
Predict = Callable[[Rows], list[dict[str, Any]]]


class _Pending:
    def __init__(self, rows: list[tuple[str, str]]) -> None:
        self.rows = rows
        self.done = threading.Event()
        self.result: list[dict[str, Any]] | BaseException = []


class _Batcher:
    def __init__(self, predict: Predict, max_batch_rows: int, max_wait_ms: float) -> None:
        self.predict = predict
        self.max_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000.0
        self.queue: queue.Queue[_Pending] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def run(self, rows: list[tuple[str, str]]) -> list[dict[str, Any]]:
        pending = _Pending(rows)
        self.queue.put(pending)
        pending.done.wait()
        if isinstance(pending.result, BaseException):
            raise pending.result
        return pending.result

    def _loop(self) -> None:
        carry: _Pending | None = None
        while True:
            first = carry or self.queue.get()
            carry = None
            batch, rows = [first], len(first.rows)
            deadline = time.perf_counter() + self.max_wait
            while rows < self.max_rows:
                try:
                    item = self.queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if rows + len(item.rows) > self.max_rows:
                    carry = item  # first of the next pass
                    break
                batch.append(item)
                rows += len(item.rows)
            flat = [row for item in batch for row in item.rows]
            try:
                out = self.predict(flat)
                start = 0
                for item in batch:
                    item.result = out[start : start + len(item.rows)]
                    start += len(item.rows)
            except BaseException as error:  # every request of the failed pass gets the error
                for item in batch:
                    item.result = error
            for item in batch:
                item.done.set()


def serve(
    predict: Predict,
    adapters: Sequence[str],
    port: int,
    *,
    batching: bool,
    max_batch_rows: int = 64,
    max_wait_ms: float = 5.0,
    host: str = "127.0.0.1",
) -> None:
    """Serve until killed (see the module docstring)."""
    known = set(adapters)
    lock = threading.Lock()
    batcher = _Batcher(predict, max_batch_rows, max_wait_ms) if batching else None

    def answer(rows: list[tuple[str, str]]) -> list[dict[str, Any]]:
        if batcher is not None:
            return batcher.run(rows)
        with lock:
            return predict(rows)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the clients reuse their connection

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {"status": "ok", "adapters": sorted(known)})
            else:
                self._send(404, {"detail": f"no route {self.path}"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if self.path != "/v1/predict":
                self._send(404, {"detail": f"no route {self.path}"})
            elif body.get("adapter") not in known:
                self._send(404, {"detail": f"unknown adapter {body.get('adapter')!r}"})
            else:
                adapter = body["adapter"]
                try:
                    predictions = answer([(adapter, text) for text in body["inputs"]])
                except Exception as error:
                    self._send(500, {"detail": repr(error)})
                    return
                self._send(200, {"adapter": adapter, "predictions": predictions})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no line per request

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128  # listen backlog: every client connects at once (the default 5 drops some)

    server = Server((host, port), Handler)
    print(json.dumps({"listening": port}), flush=True)
    server.serve_forever()


def classification(logits: Any, labels: Sequence[str]) -> list[dict[str, Any]]:
    """``{"label", "scores"}`` per row of ``logits`` (rows, num_labels): softmax scores, as our server gives."""
    import torch

    out = []
    for row in torch.softmax(logits.float(), dim=-1).double().tolist():
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"label": labels[best], "scores": dict(zip(labels, row))})
    return out

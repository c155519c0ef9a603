"""One HTTP request through an ASGI app in this process (no socket; the app's lifespan is not run), as the Ray
replicas answer the gateway's forwarded requests with the single-process app over their own engine.

- ``stream_app(app, method, path, body)`` is an async iterator: first ``{"status", "headers"}`` (the response
  start), then each non-empty body part as the app sends it, so a streamed answer (server-sent events) passes on
  token by token. Closing the iterator early (``aclose``, or cancelling the task iterating it) is the client
  going away: the app's ``receive`` answers ``http.disconnect`` (a ``StreamingResponse`` then stops its generator,
  which cancels the generation), and the app gets ``DISCONNECT_GRACE_S`` to finish before it is cancelled.
- ``call_app(app, method, path, body)``: the whole answer, ``(status, headers, body)``.

Headers are ``(name, value)`` pairs as the app sent them (latin-1 decoded).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence
from typing import Any

DISCONNECT_GRACE_S = 5.0  # what a disconnected app gets to stop on its own before it is cancelled


def _scope(method: str, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> dict[str, Any]:
    sent = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    sent += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80), "headers": sent,
    }  # fmt: skip


async def stream_app(
    app: Any, method: str, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()
) -> AsyncGenerator[dict[str, Any] | bytes, None]:
    """``{"status", "headers"}``, then the body parts as the app sends them (see the module docstring)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    gone = asyncio.Event()
    messages: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.put_nowait(message)

    task = asyncio.create_task(app(_scope(method, path, body, headers), receive, send))
    task.add_done_callback(lambda _: messages.put_nowait(None))
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                sent = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
                yield {"status": message["status"], "headers": sent}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield bytes(message["body"])
                if not message.get("more_body", False):
                    break
        await task  # the app's own error, if it raised
    finally:
        gone.set()
        if not task.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, DISCONNECT_GRACE_S)


async def call_app(
    app: Any, method: str, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()
) -> tuple[int, list[tuple[str, str]], bytes]:
    """The whole answer of one request through ``app``: its status, headers and body."""
    status, sent, parts = 500, [], []
    async for item in stream_app(app, method, path, body, headers):
        if isinstance(item, dict):
            status, sent = item["status"], item["headers"]
        else:
            parts.append(item)
    return status, sent, b"".join(parts)

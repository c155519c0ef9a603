"""``asgi_calls``: a request through an ASGI app in process, streamed part by part as the app sends it, and a
caller that stops early disconnects the app (its streaming generator is closed, as a client going away)."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse

from adapterhub.serving.asgi_calls import DISCONNECT_GRACE_S, call_app, stream_app


def _app(release: asyncio.Event, log: list[str]) -> FastAPI:
    app = FastAPI()

    @app.post("/stream")
    async def stream() -> StreamingResponse:
        async def events():
            try:
                yield b"data: 1\n\n"
                log.append("first sent")
                await release.wait()  # the second part only once the caller saw the first
                yield b"data: 2\n\n"
                log.append("second sent")
            finally:
                log.append("closed")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/json")
    async def whole(body: dict) -> JSONResponse:
        return JSONResponse({"echo": body}, 201, headers={"X-Test": "yes"})

    return app


def test_parts_arrive_as_sent_and_the_whole_answer_is_theirs():
    async def main():
        release, log = asyncio.Event(), []
        app = _app(release, log)
        parts = stream_app(app, "POST", "/stream", b"{}")
        head = await parts.__anext__()
        first = await parts.__anext__()
        seen_before_release = list(log)
        release.set()
        rest = [p async for p in parts]
        status, headers, body = await call_app(app, "POST", "/json", b'{"a": 1}')
        return head, first, seen_before_release, rest, log, status, dict(headers), body

    head, first, before, rest, log, status, headers, body = asyncio.run(main())
    assert head["status"] == 200 and ("content-type", "text/event-stream; charset=utf-8") in head["headers"]
    assert first == b"data: 1\n\n" and "second sent" not in before  # streamed, not buffered
    assert rest == [b"data: 2\n\n"] and log == ["first sent", "second sent", "closed"]
    assert status == 201 and headers["x-test"] == "yes" and body == b'{"echo":{"a":1}}'


def test_stopping_early_disconnects_the_app():
    async def main():
        release, log = asyncio.Event(), []
        parts = stream_app(_app(release, log), "POST", "/stream", b"{}")
        await parts.__anext__()
        await parts.__anext__()
        started = time.perf_counter()
        await parts.aclose()  # the caller went away before the second part
        return log, time.perf_counter() - started

    log, took = asyncio.run(main())
    assert log == ["first sent", "closed"]
    assert took < DISCONNECT_GRACE_S / 5  # the app stopped on the disconnect, not cancelled after the grace


def test_a_cancelled_caller_disconnects_the_app():
    async def main():
        release, log = asyncio.Event(), []
        got: list[bytes | dict] = []

        async def consume():
            async for part in stream_app(_app(release, log), "POST", "/stream", b"{}"):
                got.append(part)

        task = asyncio.create_task(consume())
        while len(got) < 2:
            await asyncio.sleep(0.01)
        task.cancel()  # as Ray cancels the replica's call
        await asyncio.gather(task, return_exceptions=True)
        return log

    assert asyncio.run(main()) == ["first sent", "closed"]

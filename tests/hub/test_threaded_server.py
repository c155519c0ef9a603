"""The uvicorn-in-a-thread runner shared by the embedded hub and the in-process model server."""

from __future__ import annotations

import json
import urllib.request

import pytest

from adapterhub.errors import AdapterHubError
from adapterhub.hub.threaded_server import ThreadedServer


def _app(status: int):
    async def app(scope, receive, send):  # a bare ASGI app: every path answers `status`
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps({"path": scope["path"]}).encode()})

    return app


def test_serves_until_stopped():
    server = ThreadedServer(name="test-server")
    server.start(_app(200), "/health", "test server")
    try:
        assert server.running()
        with urllib.request.urlopen(server.url + "/x", timeout=5) as response:
            assert json.loads(response.read()) == {"path": "/x"}
    finally:
        server.stop(join=10)
    assert not server.running()


def test_a_server_that_never_turns_healthy_is_stopped_and_reported():
    server = ThreadedServer(name="test-unhealthy")
    with pytest.raises(AdapterHubError, match="test server did not start"):
        server.start(_app(503), "/health", "test server", timeout=1.0)
    assert not server.running()

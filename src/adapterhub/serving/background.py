"""``with BackgroundServer(engine) as server:`` serves a ``ServingEngine`` over HTTP (uvicorn) from a thread of
this process on ``server.url`` until the block ends; leaving the block shuts it down gracefully (queued requests
are answered first). Used by ``adapterhub demo`` and live-server tests."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from adapterhub.hub.threaded_server import ThreadedServer


class BackgroundServer:
    """A uvicorn server for ``engine``'s app on ``host:port`` (port 0: a free one) in a daemon thread;
    ``preload``: load every known adapter before the server answers."""

    def __init__(
        self,
        engine: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        preload: bool = False,
    ) -> None:
        self.engine = engine
        self._runner = ThreadedServer(host, port, name="adapterhub-serve-model")
        self.host = host
        self.port = self._runner.port
        self.url = self._runner.url
        self.token = token
        self.preload = preload

    def __enter__(self) -> BackgroundServer:
        from adapterhub.serving.app import create_app

        app = create_app(self.engine, token=self.token, preload=self.preload)
        self._runner.start(app, "/health", "model server")
        return self

    def wait(self) -> None:
        """Block until Ctrl-C (or the server stops)."""
        self._runner.wait()

    def running(self) -> bool:
        return self._runner.running()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._runner.stop(join=30)

"""``with BackgroundServer(engine) as server:`` serves a ``ServingEngine`` over HTTP (uvicorn) from a thread of
this process on ``server.url`` until the block ends; leaving the block shuts it down gracefully (queued requests
are answered first). Used by ``adapterhub demo`` and live-server tests."""

from __future__ import annotations

import threading
import time
import urllib.request
from types import TracebackType
from typing import Any

from adapterhub.errors import AdapterHubError


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
        from adapterhub.hub.embedded import free_port

        self.engine = engine
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.token = token
        self.preload = preload
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BackgroundServer:
        import uvicorn

        from adapterhub.serving.app import create_app

        config = uvicorn.Config(
            create_app(self.engine, token=self.token, preload=self.preload),
            host=self.host,
            port=self.port,
            log_level="warning",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="adapterhub-serve-model", daemon=True)
        self._thread.start()
        self._wait_healthy(30.0)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._thread is not None and not self._thread.is_alive():
                break
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise AdapterHubError(f"The model server did not start on {self.url} within {timeout:.0f} s.")

    def wait(self) -> None:
        """Block until Ctrl-C (or the server stops)."""
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)

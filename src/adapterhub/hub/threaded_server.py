"""A uvicorn server for an ASGI app in a daemon thread of this process: what the embedded hub
(``adapterhub.hub.embedded``) and the in-process model server (``adapterhub.serving.background``) share.

``ThreadedServer(host, port, name)`` picks a free port when ``port`` is 0; ``start(app, health_path, what)``
serves ``app`` on ``url`` and returns once ``GET url + health_path`` answers 200 (or raises ``AdapterHubError``
naming ``what`` after ``timeout`` seconds); ``wait()`` blocks until Ctrl-C or the server stops; ``stop(join)``
asks uvicorn to exit (it finishes the requests in flight) and waits up to ``join`` seconds for the thread.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from typing import Any

from adapterhub.errors import AdapterHubError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ThreadedServer:
    """One uvicorn server in a daemon thread named ``name``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, name: str = "adapterhub-server") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.name = name
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(
        self, app: Any, health_path: str, what: str, timeout: float = 30.0, **uvicorn_options: Any
    ) -> None:
        import uvicorn

        config = uvicorn.Config(app, host=self.host, port=self.port, log_level="warning", **uvicorn_options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                break
            try:
                with urllib.request.urlopen(self.url + health_path, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        self.stop(join=5)
        raise AdapterHubError(f"The {what} did not start on {self.url} within {timeout:.0f} s.")

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until Ctrl-C (or the server stops)."""
        try:
            while self.running():
                assert self._thread is not None
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass

    def stop(self, join: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(join)

"""A hub in a folder, served from a thread of this process: the embedded default (SQLite + local storage).

Used by ``adapterhub demo`` to show the whole cycle on one machine: publish, search, load by name, browse.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from adapterhub.hub.errors import HubError

SEED_FILE = Path(__file__).with_name("seed.json")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedHub:
    """``with EmbeddedHub(folder) as hub:`` opens (or creates) the hub in ``folder``, seeds the default tasks,
    makes sure user ``owner`` exists with a fresh API token (``hub.token``), and serves API + website on
    ``hub.url`` until the block ends (or ``wait()`` is interrupted)."""

    def __init__(
        self, folder: str | Path, *, owner: str = "demo", host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.folder = Path(folder)
        self.owner = owner
        self.host = host
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.token = ""
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> EmbeddedHub:
        import uvicorn

        from adapterhub.hub.server import service
        from adapterhub.hub.server.app import create_app, open_hub
        from adapterhub.hub.server.settings import HubSettings

        self.folder.mkdir(parents=True, exist_ok=True)
        settings = HubSettings(
            db_url=f"sqlite:///{(self.folder / 'hub.sqlite3').resolve()}",
            storage_url=str((self.folder / "storage").resolve()),
        )
        hub = open_hub(settings)
        with hub.sessions() as s, s.begin():
            service.seed_taxonomy(s, json.loads(SEED_FILE.read_text()))
            user = service.get_owner(s, self.owner) or service.create_owner(
                s, self.owner, display_name="Demo user"
            )
            self.token = service.create_token(s, user, "demo")
        config = uvicorn.Config(
            create_app(hub=hub), host=self.host, port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="adapterhub-hub", daemon=True)
        self._thread.start()
        self._wait_healthy(30.0)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/api/v1/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise HubError(f"The embedded hub did not start on {self.url} within {timeout:.0f} s.")

    def wait(self) -> None:
        """Block until Ctrl-C."""
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

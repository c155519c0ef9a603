"""A hub in a folder, served from a thread of this process: the embedded default (SQLite + local storage).

Used by ``adapterhub demo`` to show the whole cycle on one machine: publish, search, load by name, browse.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType

from adapterhub.hub.threaded_server import ThreadedServer, free_port

__all__ = ["EmbeddedHub", "free_port"]

SEED_FILE = Path(__file__).with_name("seed.json")


class EmbeddedHub:
    """``with EmbeddedHub(folder) as hub:`` opens (or creates) the hub in ``folder``, seeds the default tasks,
    makes sure user ``owner`` exists with a fresh API token (``hub.token``), and serves API + website on
    ``hub.url`` until the block ends (or ``wait()`` is interrupted)."""

    def __init__(
        self, folder: str | Path, *, owner: str = "demo", host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.folder = Path(folder)
        self.owner = owner
        self._runner = ThreadedServer(host, port, name="adapterhub-hub")
        self.host = host
        self.port = self._runner.port
        self.url = self._runner.url
        self.token = ""

    def __enter__(self) -> EmbeddedHub:
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
        self._runner.start(create_app(hub=hub), "/api/v1/health", "embedded hub", lifespan="off")
        return self

    def wait(self) -> None:
        """Block until Ctrl-C."""
        self._runner.wait()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._runner.stop(join=10)

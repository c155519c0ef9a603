"""Fixtures of the website tests: one hub per module, seeded through the upload API with adapters the library
saved; the embedded backend (SQLite + a local folder) in a temporary directory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("jinja2")

import webkit

_CLEAR_ENV = (
    "ADAPTERHUB_OFFLINE",
    "HF_HUB_OFFLINE",
    "ADAPTERHUB_TOKEN",
    "ADAPTERHUB_HUB_URL",
    "ADAPTERHUB_HUB_DB",
    "ADAPTERHUB_HUB_STORAGE",
    "ADAPTERHUB_HUB_MAX_UPLOAD_BYTES",
    "ADAPTERHUB_HUB_TEST_PAUSE_BEFORE_COMMIT",
)


def _isolate(mp: pytest.MonkeyPatch, tmp: Path) -> None:
    for var in _CLEAR_ENV:
        mp.delenv(var, raising=False)
    mp.setenv("ADAPTERHUB_HOME", str(tmp / "home"))
    mp.setenv("ADAPTERHUB_CACHE", str(tmp / "cache"))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webkit.Seeded]:
    tmp = tmp_path_factory.mktemp("hub-web")
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp)
        hub = webkit.make_seeded_hub(tmp)
        try:
            yield hub
        finally:
            hub.hub.engine.dispose()


@pytest.fixture(scope="module")
def client(seeded: webkit.Seeded) -> Iterator[object]:
    from fastapi.testclient import TestClient

    with TestClient(seeded.app, raise_server_exceptions=True) as c:
        yield c

"""Fixtures of the website tests: one hub per module, seeded through the upload API with adapters the library
saved; the embedded backend (SQLite + a local folder) in a temporary directory."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hub"))  # hubkit

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")
pytest.importorskip("jinja2")

import hubkit
import webkit


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webkit.Seeded]:
    tmp = tmp_path_factory.mktemp("hub-web")
    with pytest.MonkeyPatch.context() as mp:
        hubkit.isolate_environment(mp, tmp)
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

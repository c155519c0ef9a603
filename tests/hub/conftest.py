"""Fixtures of the hub tests.

The API suite runs against two backends: ``sqlite`` (embedded: SQLite file + local folder) and ``postgres``
(PostgreSQL + S3 served by a local moto server). PostgreSQL comes from ``$ADAPTERHUB_TEST_POSTGRES_URL`` when set,
else from ``scripts/hub/start_postgres.sh``; when neither works the ``postgres`` cases skip with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import hubkit

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")


def _limits() -> Any:
    from adapterhub.hub.archive import ArchiveLimits

    return ArchiveLimits(max_files=16, max_file_bytes=8 * 1024 * 1024, max_total_bytes=8 * 1024 * 1024)


TEST_LIMITS = _limits()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Own home and cache per test."""
    hubkit.isolate_environment(monkeypatch, tmp_path)


# ------------------------------------------------------------------------------------------- PostgreSQL, S3


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("ADAPTERHUB_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    script = hubkit.REPO / "scripts" / "hub" / "start_postgres.sh"
    pg_dir = Path(f"/tmp/adapterhub-pg-test-{uuid.uuid4().hex[:8]}")
    try:
        proc = subprocess.run(
            ["bash", str(script), "--dir", str(pg_dir)], capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"PostgreSQL could not be started: {error}")
    if proc.returncode != 0:
        pytest.skip(
            f"PostgreSQL could not be started (start_postgres.sh exit {proc.returncode}): "
            f"{proc.stderr.strip()[-300:]}"
        )
    url = proc.stdout.strip().splitlines()[-1]
    try:
        yield url
    finally:
        subprocess.run(["bash", str(script), "--stop", str(pg_dir)], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        port = hubkit.free_port()
        server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@dataclass
class Backend:
    kind: str
    db_url: str
    storage_url: str
    s3_endpoint: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _new_pg_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = "hubtest_" + uuid.uuid4().hex[:12]
    with psycopg.connect(
        admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _db = admin_url.rpartition("/")
    return f"{base}/{name}", name


def _drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(
        admin_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'hub.sqlite3'}", str(tmp_path / "storage"))
        return
    admin = request.getfixturevalue("postgres_admin_url")
    endpoint = request.getfixturevalue("moto_endpoint")
    _aws_env(monkeypatch)
    db_url, name = _new_pg_database(admin)
    bucket = "hub-" + uuid.uuid4().hex[:12]
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "ADAPTERHUB_S3_ENDPOINT_URL": endpoint,
    }
    monkeypatch.setenv("ADAPTERHUB_S3_ENDPOINT_URL", endpoint)
    try:
        yield Backend("postgres", db_url, f"s3://{bucket}/blobs", endpoint, env)
    finally:
        _drop_pg_database(admin, name)


# ----------------------------------------------------------------------------------------------- the hub


@dataclass
class HubEnv:
    backend: Backend
    hub: Any
    app: Any
    client: Any
    tokens: dict[str, str]
    tmp: Path
    _n: list[int] = field(default_factory=lambda: [0])

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}

    def adapter_dir(self, **kwargs: Any) -> Path:
        self._n[0] += 1
        kwargs.setdefault("seed", self._n[0])
        return hubkit.make_adapter_dir(self.tmp / f"adapter-{self._n[0]}", **kwargs)

    def upload(
        self,
        owner: str,
        name: str,
        directory: Path | None = None,
        *,
        user: str = "alice",
        card: dict[str, Any] | None = None,
        archive: bytes | None = None,
        **dir_kwargs: Any,
    ) -> Any:
        from adapterhub.hub.archive import pack_directory_bytes

        if archive is None:
            archive = pack_directory_bytes(directory or self.adapter_dir(**dir_kwargs))
        if card is None:
            card = {
                "task": "sentiment",
                "subtask": "sst-2",
                "license": "apache-2.0",
                "metrics": {"accuracy": 0.9},
            }
        headers = self.auth(user) if user else {}
        return self.client.post(
            f"/api/v1/adapters/{owner}/{name}/versions",
            headers=headers,
            data={"card": json.dumps(card)},
            files={"archive": ("a.tar.gz", archive, "application/gzip")},
        )

    def resolve(self, identifier: str, **params: Any) -> Any:
        params = {"model_type": "bert", "model_name": "tiny-bert", "hidden_size": 32, **params}
        return self.client.get("/api/v1/resolve", params={"identifier": identifier, **params})


populate_accounts = hubkit.populate_accounts


@pytest.fixture
def hub_env(backend: Backend, tmp_path: Path) -> Iterator[HubEnv]:
    from fastapi.testclient import TestClient

    from adapterhub.hub.server.app import create_app, open_hub
    from adapterhub.hub.server.settings import HubSettings

    settings = HubSettings(
        db_url=backend.db_url,
        storage_url=backend.storage_url,
        s3_endpoint_url=backend.s3_endpoint,
        max_upload_bytes=4 * 1024 * 1024,
        archive_limits=TEST_LIMITS,
    )
    hub = open_hub(settings)
    tokens = populate_accounts(hub)
    app = create_app(hub=hub, web=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield HubEnv(backend, hub, app, client, tokens, tmp_path)
    hub.engine.dispose()


@pytest.fixture
def sqlite_env(tmp_path: Path) -> Iterator[HubEnv]:
    """The embedded backend only (for tests that need not run twice)."""
    from fastapi.testclient import TestClient

    from adapterhub.hub.server.app import create_app, open_hub
    from adapterhub.hub.server.settings import HubSettings

    backend = Backend("sqlite", f"sqlite:///{tmp_path / 'hub.sqlite3'}", str(tmp_path / "storage"))
    hub = open_hub(
        HubSettings(
            db_url=backend.db_url,
            storage_url=backend.storage_url,
            max_upload_bytes=4 * 1024 * 1024,
            archive_limits=TEST_LIMITS,
        )
    )
    tokens = populate_accounts(hub)
    app = create_app(hub=hub, web=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield HubEnv(backend, hub, app, client, tokens, tmp_path)
    hub.engine.dispose()

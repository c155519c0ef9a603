"""The hub stores ``AdapterManifest.modules`` (the modules an adapter's low-rank factors target by name) with each
version, in both storage backends (SQLite; PostgreSQL where it can be started), returns it in the adapter metadata
API (the adapter's versions and one version), under either weights check; migration 0002 adds the column to a
database made by 0001, where older versions read back ``[]``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import adapterhub
from adapterhub.io.manifest import inspect_adapter_dir
from tiny_models import build

CONV = {
    "path": "embeddings.patch_embeddings.projection",
    "kind": "conv2d",
    "r": 2,
    "d_in": 3,
    "d_out": 32,
    "kernel": [4, 4],
    "layer": None,
}


def _conv_loha_dir(tmp_path):
    model = adapterhub.init(build("vit", "base"))
    model.add_adapter("k", {"method": "loha", "r": 2, "target_modules": ["projection", "dense"]})
    return model.save_adapter(tmp_path / "k", "k")


@pytest.mark.parametrize("check", ["full", "header"])
def test_modules_are_stored_with_the_version_and_returned(hub_env, tmp_path, monkeypatch, check):
    monkeypatch.setattr(hub_env.hub.settings, "weights_check", check)
    directory = _conv_loha_dir(tmp_path)
    expected = [m.to_dict() for m in inspect_adapter_dir(directory).modules]
    assert CONV in expected and len(expected) > 1  # the convolution and the layers' `dense` modules
    created = hub_env.upload("alice", "k", directory)
    assert created.status_code == 201, created.text
    assert created.json()["modules"] == expected
    detail = hub_env.client.get("/api/v1/adapters/alice/k").json()
    assert detail["versions"][0]["modules"] == expected
    assert hub_env.client.get("/api/v1/adapters/alice/k/versions/1").json()["modules"] == expected
    # an adapter on spec points only targets no module by name
    assert hub_env.upload("alice", "plain").status_code == 201
    assert hub_env.client.get("/api/v1/adapters/alice/plain/versions/1").json()["modules"] == []


def test_migration_0002_adds_modules_to_an_existing_database(backend):
    from adapterhub.hub.server.database import make_engine, migrate

    engine = make_engine(backend.db_url)
    migrate(engine, "0001_initial")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO owners (id, name, name_key, kind, display_name, is_admin, created_at) "
                "VALUES (1, 'alice', 'alice', 'user', '', false, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO adapters (id, owner_id, name, adapter_type, model_type, model_name, model_key, "
                "hidden_size, method, config, config_hash, config_name, has_head, license, description, citation, "
                "metrics, num_parameters, latest_version, downloads, created_at, updated_at) VALUES (1, 1, 'old', "
                "'task', 'bert', '', '', 32, 'lora', '{}', 'h', '', false, '', '', '', '{}', 0, 1, 0, "
                "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO adapter_versions (id, adapter_id, number, sha256, size, storage_key, layout, config, "
                "config_hash, metrics, files, num_parameters, downloads, created_at) VALUES (1, 1, 1, 's', 1, 'k', "
                "'adapterhub', '{}', 'h', '{}', '[]', 0, 0, CURRENT_TIMESTAMP)"
            )
        )
    columns = {c["name"] for c in sa.inspect(engine).get_columns("adapter_versions")}
    assert "modules" not in columns
    migrate(engine)
    with engine.connect() as conn:
        modules = conn.execute(sa.text("SELECT modules FROM adapter_versions WHERE id = 1")).scalar_one()
    engine.dispose()
    assert modules in ([], "[]")  # PostgreSQL's JSON decodes, SQLite's text is the stored JSON


def test_adapter_page_lists_the_targeted_modules(sqlite_env, tmp_path):
    pytest.importorskip("jinja2")
    from fastapi.testclient import TestClient

    from adapterhub.hub.server.app import create_app

    assert sqlite_env.upload("alice", "k", _conv_loha_dir(tmp_path)).status_code == 201
    assert sqlite_env.upload("alice", "plain").status_code == 201
    with TestClient(create_app(hub=sqlite_env.hub, web=True)) as web:
        page = web.get("/adapters/alice/k").text
        plain = web.get("/adapters/alice/plain").text
    assert 'id="modules"' in page and "<code>embeddings.patch_embeddings.projection</code>" in page
    assert '<td data-label="Kernel">4×4</td>' in page and '<td data-label="Kind">conv2d</td>' in page
    assert 'id="modules"' not in plain

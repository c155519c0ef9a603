"""API round trips, run on the embedded backend (SQLite + folder) and on PostgreSQL + S3 (moto)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import hubkit

from adapterhub.hub.archive import pack_directory_bytes


def _error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == code, body
    assert body["message"]
    return body


def test_publish_download_round_trip(hub_env):
    d = hub_env.adapter_dir(name="bert-sst2", id2label={0: "neg", 1: "pos"})
    r = hub_env.upload("alice", "bert-sst2", d)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["version"] == 1 and body["created"] is True and body["id"] == "@alice/bert-sst2"
    archive = hub_env.client.get(body["archive_url"])
    assert archive.status_code == 200
    assert (
        hashlib.sha256(archive.content).hexdigest()
        == body["sha256"]
        == archive.headers["x-adapterhub-sha256"]
    )
    assert len(archive.content) == body["size"]
    assert archive.content == pack_directory_bytes(d)  # canonical, reproducible packing
    detail = hub_env.client.get("/api/v1/adapters/alice/bert-sst2").json()
    assert detail["task"] == "sentiment" and detail["subtask"] == "sst-2"
    assert detail["model_type"] == "bert" and detail["hidden_size"] == 32 and detail["num_layers"] == 2
    assert detail["config"]["method"] == "bottleneck" and detail["config_name"] == ""
    assert detail["has_head"] is True and detail["id2label"] == {"0": "neg", "1": "pos"}
    assert detail["license"] == "apache-2.0" and detail["metrics"] == {"accuracy": 0.9}
    assert detail["score"] == 0.9 and detail["downloads"] == 1
    assert [v["version"] for v in detail["versions"]] == [1]
    assert detail["versions"][0]["downloads"] == 1
    assert hub_env.client.get("/api/v1/stats").json()["versions"] == 1


def test_versions_are_immutable_and_numbered(hub_env):
    r1 = hub_env.upload("alice", "a", hub_env.adapter_dir(name="a")).json()
    first = hub_env.client.get(r1["archive_url"]).content
    r2 = hub_env.upload(
        "alice",
        "a",
        hub_env.adapter_dir(name="a"),
        card={
            "task": "sentiment",
            "subtask": "sst-2",
            "metrics": {"accuracy": 0.95},
            "description": "better",
        },
    ).json()
    assert (r1["version"], r2["version"]) == (1, 2) and r1["sha256"] != r2["sha256"]
    assert hub_env.client.get(r1["archive_url"]).content == first
    assert hub_env.client.get("/api/v1/adapters/alice/a/versions/1").json()["sha256"] == r1["sha256"]
    detail = hub_env.client.get("/api/v1/adapters/alice/a").json()
    assert detail["latest_version"] == 2 and detail["description"] == "better" and detail["score"] == 0.95
    # the same content again is not a new version
    d = hub_env.tmp / "same"
    hubkit.make_adapter_dir(d, name="a", seed=999)
    card = {"task": "sentiment", "subtask": "sst-2", "metrics": {"accuracy": 0.95}}
    r3 = hub_env.upload("alice", "a", d, card=card)
    r4 = hub_env.upload("alice", "a", d, card=card)
    assert r3.status_code == 201 and r4.status_code == 200
    assert r3.json()["version"] == r4.json()["version"] == 3 and r4.json()["created"] is False


def test_tokens_and_membership(hub_env):
    d = hub_env.adapter_dir()
    _error(hub_env.upload("alice", "x", d, user=""), 401, "unauthorized")
    hub_env.tokens["forged"] = "ahub_" + "x" * 43
    _error(hub_env.upload("alice", "x", d, user="forged"), 401, "unauthorized")
    r = hub_env.client.post("/api/v1/adapters/alice/x/versions", headers={"Authorization": "Basic abc"})
    _error(r, 401, "unauthorized")
    _error(hub_env.upload("alice", "x", d, user="bob"), 403, "forbidden")
    _error(hub_env.upload("acme", "x", d, user="bob"), 403, "forbidden")
    assert hub_env.upload("acme", "x", d, user="alice").status_code == 201
    assert hub_env.upload("alice", "x", d, user="admin").status_code == 201
    _error(hub_env.upload("nobody", "x", d), 404, "unknown_owner")
    # alice (org admin) adds bob; then bob may publish under acme
    r = hub_env.client.post("/api/v1/orgs/acme/members", json={"user": "bob"}, headers=hub_env.auth("alice"))
    assert r.status_code == 201, r.text
    assert hub_env.upload("acme", "y", d, user="bob").status_code == 201
    r = hub_env.client.post("/api/v1/orgs/acme/members", json={"user": "admin"}, headers=hub_env.auth("bob"))
    _error(r, 403, "forbidden")
    who = hub_env.client.get("/api/v1/whoami", headers=hub_env.auth("bob")).json()
    assert who == {"name": "bob", "kind": "user", "is_admin": False, "orgs": ["acme"]}


def test_accounts_api(hub_env):
    r = hub_env.client.post("/api/v1/users", json={"name": "carol"}, headers=hub_env.auth("alice"))
    _error(r, 403, "forbidden")
    r = hub_env.client.post("/api/v1/users", json={"name": "carol"}, headers=hub_env.auth("admin"))
    assert r.status_code == 201
    token = r.json()["token"]
    assert (
        hub_env.client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}).json()["name"]
        == "carol"
    )
    _error(
        hub_env.client.post("/api/v1/users", json={"name": "Carol"}, headers=hub_env.auth("admin")),
        409,
        "exists",
    )
    _error(
        hub_env.client.post("/api/v1/users", json={"name": "bad name"}, headers=hub_env.auth("admin")),
        422,
        "invalid_name",
    )
    r = hub_env.client.post(
        "/api/v1/orgs", json={"name": "lab"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 201 and r.json()["members"] == ["carol"]
    r = hub_env.client.post(
        "/api/v1/tokens", json={"name": "ci"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 201 and r.json()["token"].startswith("ahub_")
    owner = hub_env.client.get("/api/v1/owners/lab").json()
    assert owner["kind"] == "org" and owner["adapters"] == []


def test_tokens_are_stored_hashed(hub_env):
    import sqlalchemy as sa

    from adapterhub.hub.server.models import ApiToken

    with hub_env.hub.sessions() as s:
        stored = s.scalars(sa.select(ApiToken.token_hash)).all()
    assert hub_env.tokens["alice"] not in stored
    assert hashlib.sha256(hub_env.tokens["alice"].encode()).hexdigest() in stored


def test_referential_checks(hub_env):
    d = hub_env.adapter_dir()
    body = _error(
        hub_env.upload("alice", "x", d, card={"task": "sentimnt", "subtask": "sst-2"}), 404, "unknown_task"
    )
    assert "sentiment" in body["candidates"]
    body = _error(
        hub_env.upload("alice", "x", d, card={"task": "sentiment", "subtask": "sst"}), 404, "unknown_subtask"
    )
    assert "sentiment/sst-2" in body["candidates"]
    _error(hub_env.upload("alice", "x", d, card={"task": "sentiment"}), 422, "invalid_card")
    _error(hub_env.upload("alice", "x", d, card={"adapter_type": "language"}), 422, "invalid_card")
    _error(
        hub_env.upload("alice", "x", d, card={"adapter_type": "language", "language": "xx"}),
        404,
        "unknown_language",
    )
    r = hub_env.upload("alice", "x", d, card={"adapter_type": "language", "language": "de"})
    assert r.status_code == 201
    # identity of an adapter is fixed: another subtask needs another name
    _error(
        hub_env.upload("alice", "x", hub_env.adapter_dir(), card={"task": "sentiment", "subtask": "imdb"}),
        409,
        "conflict",
    )
    assert hub_env.client.get("/api/v1/stats").json()["versions"] == 1


def test_card_validation(hub_env):
    d = hub_env.adapter_dir()
    archive = pack_directory_bytes(d)
    for card in (
        {"task": "sentiment", "subtask": "sst-2", "bogus": 1},
        {"task": "sentiment", "subtask": "sst-2", "metrics": {"accuracy": "high"}},
        {"task": "sentiment", "subtask": "sst-2", "license": "x" * 101},
        {"task": "sentiment", "subtask": "sst-2", "description": "nul\x00byte"},
        {"task": "sentiment", "subtask": "sst-2", "adapter_type": "fusion"},
    ):
        _error(hub_env.upload("alice", "x", archive=archive, card=card), 422, "invalid_card")
    r = hub_env.client.post(
        "/api/v1/adapters/alice/x/versions",
        headers=hub_env.auth("alice"),
        data={"card": "{not json"},
        files={"archive": ("a.tar.gz", archive)},
    )
    _error(r, 422, "invalid_card")
    r = hub_env.client.post(
        "/api/v1/adapters/alice/x/versions",
        headers=hub_env.auth("alice"),
        data={
            "card": json.dumps({"task": "sentiment", "subtask": "sst-2", "metrics": {"a": 1}}).replace(
                "1", "NaN"
            )
        },
        files={"archive": ("a.tar.gz", archive)},
    )
    _error(r, 422, "invalid_card")
    r = hub_env.client.post(
        "/api/v1/adapters/alice/x/versions", headers=hub_env.auth("alice"), data={"card": "{}"}
    )
    _error(r, 422, "invalid_request")
    _error(
        hub_env.upload(
            "alice",
            "x",
            archive=archive,
            card={"task": "sentiment", "subtask": "sst-2", "model_type": "gpt2"},
        ),
        422,
        "model_mismatch",
    )
    _error(hub_env.upload("alice", "bad name!", archive=archive), 422, "invalid_name")
    assert hub_env.client.get("/api/v1/stats").json()["adapters"] == 0


def test_adapter_validation(hub_env):
    d = hub_env.adapter_dir(name="w", weight_hidden_size=16)  # weights for d=16, config says 32
    _error(hub_env.upload("alice", "w", d), 422, "model_mismatch")
    d = hub_env.adapter_dir(name="h")
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg["config_hash"] = "0" * 64
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    _error(hub_env.upload("alice", "h", d), 422, "invalid_adapter")
    d = hub_env.adapter_dir(name="n")
    (d / "adapter_config.json").unlink()
    _error(hub_env.upload("alice", "n", d), 422, "invalid_adapter")
    d = hub_env.adapter_dir(name="t")
    (d / "adapter.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    _error(hub_env.upload("alice", "t", d), 422, "invalid_adapter")
    assert hub_env.client.get("/api/v1/stats").json()["versions"] == 0


def _publish_set(hub_env) -> None:
    specs = [
        ("alice", "bert-sst2", "sentiment", "sst-2", 0.91, {}),
        ("acme", "bert-sst2-houlsby", "sentiment", "sst-2", 0.93, {"reduction_factor": 4}),
        ("alice", "bert-imdb", "sentiment", "imdb", 0.88, {}),
        ("alice", "bert-mnli", "nli", "mnli", 0.80, {}),
        ("bob", "gpt2-sst2", "sentiment", "sst-2", 0.85, {"model_type": "gpt2", "model_name": "gpt2"}),
        ("bob", "big-sst2", "sentiment", "sst-2", 0.99, {"hidden_size": 64}),
    ]
    for owner, name, task, sub, acc, kw in specs:
        user = "alice" if owner == "acme" else owner
        r = hub_env.upload(
            owner,
            name,
            hub_env.adapter_dir(name=name, **kw),
            user=user,
            card={
                "task": task,
                "subtask": sub,
                "metrics": {"accuracy": acc},
                "description": f"{name} adapter",
            },
        )
        assert r.status_code == 201, r.text
    r = hub_env.upload(
        "alice",
        "de-wiki",
        hub_env.adapter_dir(name="de-wiki"),
        card={"adapter_type": "language", "language": "de", "description": "German MLM"},
    )
    assert r.status_code == 201


def test_search_and_filters(hub_env):
    _publish_set(hub_env)
    get = lambda **p: hub_env.client.get("/api/v1/adapters", params=p).json()  # noqa: E731
    ids = lambda res: [i["id"] for i in res["items"]]  # noqa: E731
    assert get()["total"] == 7
    assert ids(get(subtask="sst-2", model_type="bert", hidden_size=32)) == [
        "@acme/bert-sst2-houlsby",
        "@alice/bert-sst2",
    ]
    assert ids(get(task="nli")) == ["@alice/bert-mnli"]
    assert ids(get(model_type="gpt2")) == ["@bob/gpt2-sst2"]
    assert ids(get(model_name="gpt2")) == ["@bob/gpt2-sst2"]
    assert sorted(ids(get(owner="BOB"))) == ["@bob/big-sst2", "@bob/gpt2-sst2"]
    assert ids(get(language="de")) == ["@alice/de-wiki"]
    assert ids(get(q="german")) == ["@alice/de-wiki"]
    assert ids(get(q="imdb adapter")) == ["@alice/bert-imdb"]
    assert get(q="100%_")["total"] == 0
    # config: preset with overrides, hash prefix, or nothing matching
    cfg_hash = hubkit.hashlib.sha256(hubkit.canonical(hubkit.bottleneck_config(4)).encode()).hexdigest()
    assert ids(get(config="pfeiffer[reduction_factor=4]")) == ["@acme/bert-sst2-houlsby"]
    assert ids(get(config=cfg_hash[:10])) == ["@acme/bert-sst2-houlsby"]
    assert get(config="houlsby")["total"] == 0
    # sorting by score (accuracy, higher first) and recency; pagination
    assert ids(get(subtask="sst-2", sort="score"))[:2] == ["@bob/big-sst2", "@acme/bert-sst2-houlsby"]
    assert ids(get(sort="recent"))[0] == "@alice/de-wiki"
    page1, page2 = get(per_page=4, sort="name"), get(per_page=4, page=2, sort="name")
    assert len(page1["items"]) == 4 and len(page2["items"]) == 3
    assert not set(ids(page1)) & set(ids(page2))
    _error(hub_env.client.get("/api/v1/adapters", params={"sort": "best"}), 422, "invalid_request")
    _error(hub_env.client.get("/api/v1/adapters", params={"per_page": 1000}), 422, "invalid_request")
    tasks = {t["name"]: t for t in hub_env.client.get("/api/v1/tasks").json()}
    assert {s["name"]: s["adapters"] for s in tasks["sentiment"]["subtasks"]}["sst-2"] == 4
    langs = {lang["code"]: lang["adapters"] for lang in hub_env.client.get("/api/v1/languages").json()}
    assert langs["de"] == 1


def test_model_index_etag(hub_env):
    _publish_set(hub_env)
    r = hub_env.client.get("/api/v1/index/bert.json")
    assert r.status_code == 200 and "max-age" in r.headers["cache-control"]
    etag = r.headers["etag"]
    items = r.json()["adapters"]
    assert {i["id"] for i in items} >= {"@alice/bert-sst2", "@alice/de-wiki"}
    assert all(i["model_type"] == "bert" and i["latest"]["sha256"] for i in items)
    r304 = hub_env.client.get("/api/v1/index/bert.json", headers={"If-None-Match": etag})
    assert r304.status_code == 304 and r304.headers["etag"] == etag and not r304.content
    assert (
        hub_env.client.get("/api/v1/index/bert.json", headers={"If-None-Match": '"x", ' + etag}).status_code
        == 304
    )
    hub_env.client.get(items[0]["latest"]["archive_url"])  # downloads do not change the index
    assert hub_env.client.get("/api/v1/index/bert.json", headers={"If-None-Match": etag}).status_code == 304
    hub_env.upload(
        "alice",
        "bert-rt",
        hub_env.adapter_dir(name="bert-rt"),
        card={"task": "sentiment", "subtask": "rotten_tomatoes"},
    )
    r2 = hub_env.client.get("/api/v1/index/bert.json", headers={"If-None-Match": etag})
    assert r2.status_code == 200 and r2.headers["etag"] != etag
    assert hub_env.client.get("/api/v1/index/gpt2.json").json()["adapters"][0]["id"] == "@bob/gpt2-sst2"
    assert hub_env.client.get("/api/v1/index/t5.json").json() == {"model_type": "t5", "adapters": []}
    root = hub_env.client.get("/api/v1/index.json").json()
    assert {m["model_type"]: m["adapters"] for m in root["model_types"]} == {"bert": 7, "gpt2": 1}


def test_resolve_grammar(hub_env):
    _publish_set(hub_env)
    hub_env.upload(
        "alice",
        "bert-mnli",
        hub_env.adapter_dir(name="bert-mnli"),
        card={"task": "nli", "subtask": "mnli", "metrics": {"accuracy": 0.81}},
    )
    ok = lambda ident, **kw: hub_env.resolve(ident, **kw).json()["resolved"]  # noqa: E731
    assert ok("sentiment/sst-2@alice") == "@alice/bert-sst2:1"
    assert ok("sst-2@acme") == "@acme/bert-sst2-houlsby:1"
    assert ok("sentiment/imdb") == "@alice/bert-imdb:1"
    assert ok("imdb") == "@alice/bert-imdb:1"
    assert ok("nli") == "@alice/bert-mnli:2"
    assert ok("mnli:1") == "@alice/bert-mnli:1"
    assert ok("@alice/bert-mnli:v1") == "@alice/bert-mnli:1"
    assert ok("@Alice/bert-mnli") == "@alice/bert-mnli:2"
    assert ok("de") == "@alice/de-wiki:1"
    assert ok("sst-2", hidden_size=64, model_name="") == "@bob/big-sst2:1"
    assert ok("sst-2", model_type="gpt2", model_name="gpt2", hidden_size=32) == "@bob/gpt2-sst2:1"
    # a local copy of the model (a path) matches by its last component
    assert ok("sentiment/sst-2@alice", model_name="/models/tiny-bert/") == "@alice/bert-sst2:1"
    # config narrows an ambiguous name
    assert ok("sst-2", config="pfeiffer[reduction_factor=4]") == "@acme/bert-sst2-houlsby:1"
    info = hub_env.resolve("imdb").json()
    assert info["sha256"] and info["size"] > 0 and info["archive_url"].endswith("/versions/1/archive")
    assert info["versions"] == [1] and info["config"]["method"] == "bottleneck"


def test_resolve_errors(hub_env):
    _publish_set(hub_env)
    body = _error(hub_env.resolve("sst-2"), 409, "ambiguous")
    assert body["candidates"] == ["@acme/bert-sst2-houlsby", "@alice/bert-sst2"]
    assert len(body["hints"]) == 2 and "sentiment/sst-2@acme" in body["hints"][0]
    body = _error(hub_env.resolve("sentiment"), 409, "ambiguous")
    assert body["candidates"] == ["@acme/bert-sst2-houlsby", "@alice/bert-imdb", "@alice/bert-sst2"]
    body = _error(hub_env.resolve("sst"), 404, "unknown_name")
    assert "sentiment/sst-2" in body["candidates"]
    body = _error(hub_env.resolve("sentiment/sst"), 404, "unknown_subtask")
    assert "sentiment/sst-2" in body["candidates"]
    body = _error(hub_env.resolve("sentimant/sst-2"), 404, "unknown_task")
    assert body["candidates"] == ["sentiment"]
    body = _error(hub_env.resolve("sst-2@alcie"), 404, "unknown_owner")
    assert "@alice" in body["candidates"]
    body = _error(hub_env.resolve("@alice/bert-sst"), 404, "unknown_adapter")
    assert "@alice/bert-sst2" in body["candidates"]
    body = _error(hub_env.resolve("@alice/bert-sst2:7"), 404, "unknown_version")
    assert body["candidates"] == ["@alice/bert-sst2:1"]
    _error(
        hub_env.resolve("sentiment/sst-2@bob"), 422, "model_mismatch"
    )  # bob has gpt2 and d=64 adapters only
    body = _error(hub_env.resolve("@alice/bert-sst2", hidden_size=64), 422, "model_mismatch")
    assert body["candidates"] == ["@alice/bert-sst2"]
    _error(hub_env.resolve("@alice/bert-sst2", model_name="bert-base-uncased"), 422, "model_mismatch")
    _error(hub_env.resolve("rte"), 404, "no_adapters")
    body = _error(hub_env.resolve("sst-2", config="pfeifer"), 404, "unknown_config")
    assert "pfeiffer" in body["candidates"]
    body = _error(hub_env.resolve("sst-2@alice", config="houlsby"), 404, "config_mismatch")
    assert body["candidates"] == ["@alice/bert-sst2"]
    _error(hub_env.resolve("sst-2@alice", config="deadbeef00"), 404, "config_mismatch")
    for bad in ("", "@alice", "a/b/c", "a@b@c", "sst-2:0", "sst-2:x", "../etc", "@al ice/x", "x" * 250):
        _error(hub_env.resolve(bad), 400, "bad_identifier")
    _error(hub_env.resolve("x" * 400), 422, "invalid_request")
    _error(hub_env.resolve("sst-2", model_type="bad type"), 422, "invalid_request")
    _error(hub_env.resolve("sst-2", hidden_size=0), 422, "invalid_request")
    _error(hub_env.client.get("/api/v1/resolve", params={"identifier": "sst-2"}), 422, "invalid_request")


def test_taxonomy_admin(hub_env):
    r = hub_env.client.post("/api/v1/tasks", json={"name": "summarization"}, headers=hub_env.auth("alice"))
    _error(r, 403, "forbidden")
    r = hub_env.client.post(
        "/api/v1/tasks",
        json={"name": "summarization", "description": "Summaries"},
        headers=hub_env.auth("admin"),
    )
    assert r.status_code == 201
    r = hub_env.client.post(
        "/api/v1/tasks/summarization/subtasks",
        headers=hub_env.auth("admin"),
        json={"name": "xsum", "metric": "rouge2", "metric_direction": "max"},
    )
    assert r.status_code == 201 and r.json()["task"] == "summarization"
    _error(
        hub_env.client.post(
            "/api/v1/tasks/summarization/subtasks", headers=hub_env.auth("admin"), json={"name": "xsum"}
        ),
        409,
        "exists",
    )
    _error(
        hub_env.client.post(
            "/api/v1/tasks/nope/subtasks", headers=hub_env.auth("admin"), json={"name": "xsum"}
        ),
        404,
        "unknown_task",
    )
    _error(
        hub_env.client.post(
            "/api/v1/tasks/summarization/subtasks",
            headers=hub_env.auth("admin"),
            json={"name": "x", "metric_direction": "up"},
        ),
        422,
        "invalid_request",
    )
    r = hub_env.client.post(
        "/api/v1/languages", json={"code": "yo", "display_name": "Yoruba"}, headers=hub_env.auth("admin")
    )
    assert r.status_code == 201
    task = hub_env.client.get("/api/v1/tasks/summarization").json()
    assert task["subtasks"][0]["name"] == "xsum" and task["subtasks"][0]["adapters"] == 0
    _error(hub_env.client.get("/api/v1/tasks/summarisation"), 404, "unknown_task")


def test_unknown_routes_and_schema(hub_env):
    _error(hub_env.client.get("/api/v1/nothing"), 404, "not_found")
    _error(hub_env.client.delete("/api/v1/adapters"), 405, "method_not_allowed")
    _error(hub_env.client.get("/api/v1/adapters/alice/none"), 404, "unknown_adapter")
    _error(hub_env.client.get("/api/v1/adapters/alice/none/versions/1/archive"), 404, "unknown_adapter")
    _error(
        hub_env.client.get("/api/v1/adapters/alice/x/versions/99999999999/archive"), 422, "invalid_request"
    )
    _error(hub_env.client.get("/api/v1/adapters", params={"q": "a\x00b"}), 400, "invalid_request")
    schema = hub_env.client.get("/openapi.json").json()
    assert (
        "/api/v1/resolve" in schema["paths"] and "/api/v1/adapters/{owner}/{name}/versions" in schema["paths"]
    )


def test_migrations_match_models(backend):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from adapterhub.hub.server.database import make_engine, migrate
    from adapterhub.hub.server.models import Base

    engine = make_engine(backend.db_url)
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_tar_with_top_folder_and_zip_accepted(hub_env):
    d = hub_env.adapter_dir(name="z")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(d, arcname="my-adapter")
    assert hub_env.upload("alice", "z", archive=buf.getvalue()).status_code == 201
    import zipfile

    d2 = hub_env.adapter_dir(name="z")
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(d2.iterdir()):
            zf.write(p, p.name)
    r = hub_env.upload("alice", "z", archive=zbuf.getvalue())
    assert r.status_code == 201 and r.json()["version"] == 2

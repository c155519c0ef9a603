"""Our hub's Hugging Face Hub file API, driven by the real ``huggingface_hub`` client (``HfApi``, ``hf_hub_download``,
``snapshot_download``) against a live server on loopback: commits publish versions, every revision reads back,
errors arrive in the Hub's shape as the client's own exception classes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import hubkit
import pytest

hf = pytest.importorskip("huggingface_hub")
from huggingface_hub import HfApi, hf_hub_download, snapshot_download  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from adapterhub.hub.hf_card import render_card  # noqa: E402

CARD = {"task": "sentiment", "subtask": "sst-2", "metrics": {"accuracy": 0.9}, "license": "mit"}


@pytest.fixture
def live(hub_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_HUB_FILE_CACHE", str(tmp_path / "file-cache"))
    with hubkit.ThreadServer(hub_env.app) as server:
        hub_env.url = server.url
        yield hub_env


@pytest.fixture
def live_sqlite(sqlite_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_HUB_FILE_CACHE", str(tmp_path / "file-cache"))
    with hubkit.ThreadServer(sqlite_env.app) as server:
        sqlite_env.url = server.url
        yield sqlite_env


def _api(env: Any, user: str = "alice") -> HfApi:
    return HfApi(endpoint=env.url, token=env.tokens[user])


def _repo_dir(env: Any, card: dict[str, Any] | None = None, **kwargs: Any) -> Path:
    directory = env.adapter_dir(**kwargs)
    meta = {"library_name": "adapterhub", "tags": ["bottleneck"], "adapterhub": dict(card or CARD)}
    (directory / "README.md").write_text(render_card(meta, "# demo\n"))
    return directory


def _download(env: Any, filename: str, revision: str | None = None, repo: str = "alice/demo") -> bytes:
    path = hf_hub_download(
        repo, filename, revision=revision, endpoint=env.url, cache_dir=env.tmp / "hf-cache"
    )
    return Path(path).read_bytes()


def test_upload_folder_publishes_versions_and_every_revision_reads_back(live):
    api = _api(live)
    url = api.create_repo("alice/demo")
    assert url.repo_id == "alice/demo"
    first = _repo_dir(live)
    c1 = api.upload_folder(repo_id="alice/demo", folder_path=first)
    info = api.model_info("alice/demo")
    assert info.sha == c1.oid and len(info.sha) == 40
    assert sorted(s.rfilename for s in info.siblings) == [
        "README.md",
        "adapter.safetensors",
        "adapter_config.json",
    ]
    assert info.card_data.library_name == "adapterhub" and "bottleneck" in info.tags
    assert api.list_repo_files("alice/demo") == ["README.md", "adapter.safetensors", "adapter_config.json"]
    for name in ("adapter.safetensors", "adapter_config.json", "README.md"):
        assert _download(live, name) == (first / name).read_bytes()
    detail = live.client.get("/api/v1/adapters/alice/demo").json()
    assert detail["latest_version"] == 1 and detail["task"] == "sentiment" and detail["license"] == "mit"

    # a second commit (new weights, new score) is version 2; main moves, v1 and its commit id do not
    second = _repo_dir(live, card={**CARD, "metrics": {"accuracy": 0.95}})
    c2 = api.upload_folder(repo_id="alice/demo", folder_path=second)
    assert c2.oid != c1.oid
    assert live.client.get("/api/v1/adapters/alice/demo").json()["metrics"] == {"accuracy": 0.95}
    assert _download(live, "adapter.safetensors") == (second / "adapter.safetensors").read_bytes()
    for old in ("v1", c1.oid):
        assert _download(live, "adapter.safetensors", old) == (first / "adapter.safetensors").read_bytes()
        assert api.model_info("alice/demo", revision=old).sha == c1.oid
    assert api.model_info("alice/demo", revision="v2").sha == c2.oid

    # the same folder again: the client sees no change (preupload's oids) and makes no commit
    again = api.upload_folder(repo_id="alice/demo", folder_path=second)
    assert again.oid == c2.oid
    assert live.client.get("/api/v1/adapters/alice/demo").json()["latest_version"] == 2

    folder = Path(snapshot_download("alice/demo", endpoint=live.url, cache_dir=live.tmp / "snap"))
    assert folder.name == c2.oid
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {
        p.name: p.read_bytes() for p in second.iterdir()
    }


def test_commit_applies_additions_and_deletions_to_the_newest_version(live_sqlite):
    api = _api(live_sqlite)
    directory = _repo_dir(live_sqlite)
    (directory / "notes.txt").write_text("training notes")
    api.upload_folder(repo_id="alice/demo", folder_path=directory)
    c2 = api.delete_file("notes.txt", repo_id="alice/demo")
    assert api.list_repo_files("alice/demo") == ["README.md", "adapter.safetensors", "adapter_config.json"]
    api.upload_file(path_or_fileobj=b"more notes", path_in_repo="more.txt", repo_id="alice/demo")
    files = api.list_repo_files("alice/demo")
    assert files == ["README.md", "adapter.safetensors", "adapter_config.json", "more.txt"]
    assert api.list_repo_files("alice/demo", revision=c2.oid) == files[:3]
    assert live_sqlite.client.get("/api/v1/adapters/alice/demo").json()["latest_version"] == 3
    with pytest.raises(RemoteEntryNotFoundError):
        api.delete_file("missing.txt", repo_id="alice/demo")


def test_resolve_answers_with_the_headers_the_client_reads(live_sqlite):
    api = _api(live_sqlite)
    directory = _repo_dir(live_sqlite)
    commit = api.upload_folder(repo_id="alice/demo", folder_path=directory).oid
    data = (directory / "adapter.safetensors").read_bytes()
    url = f"{live_sqlite.url}/alice/demo/resolve/main/adapter.safetensors"
    head = httpx.head(url)
    assert head.status_code == 200
    assert head.headers["x-repo-commit"] == commit
    assert head.headers["etag"] == '"' + hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() + '"'
    assert int(head.headers["content-length"]) == len(data)
    assert "x-xet-hash" not in head.headers  # plain HTTP download, never Xet
    part = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    meta = hf.get_hf_file_metadata(url)
    assert (meta.commit_hash, meta.size) == (commit, len(data))
    tree = httpx.get(f"{live_sqlite.url}/api/models/alice/demo/tree/main").json()
    assert {t["path"]: t["size"] for t in tree} == {p.name: p.stat().st_size for p in directory.iterdir()}


def test_errors_arrive_in_the_hubs_shape(live_sqlite):
    env = live_sqlite
    api = _api(env)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/nothing")
    with pytest.raises(RepositoryNotFoundError):
        _download(env, "adapter_config.json", repo="alice/nothing")
    api.upload_folder(repo_id="alice/demo", folder_path=_repo_dir(env))
    with pytest.raises(RevisionNotFoundError, match="v1"):
        api.model_info("alice/demo", revision="v7")
    with pytest.raises(RevisionNotFoundError):
        _download(env, "adapter_config.json", revision="0" * 40)
    with pytest.raises(RemoteEntryNotFoundError, match=r"adapter_config\.json"):
        _download(env, "pytorch_model.bin")
    raw = httpx.head(f"{env.url}/alice/demo/resolve/main/pytorch_model.bin")
    assert raw.headers["x-error-code"] == "EntryNotFound" and len(raw.headers["x-repo-commit"]) == 40

    # tokens: a wrong one is an authentication error (not "repo not found"); another user's namespace is 403
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(endpoint=env.url, token="ahub_wrong").upload_folder(
            repo_id="alice/demo", folder_path=_repo_dir(env)
        )
    assert wrong.value.response.status_code == 401 and not isinstance(wrong.value, RepositoryNotFoundError)
    with pytest.raises(HfHubHTTPError) as forbidden:
        _api(env, "bob").upload_folder(repo_id="alice/demo", folder_path=_repo_dir(env))
    assert forbidden.value.response.status_code == 403 and "may not publish" in str(forbidden.value)
    assert _api(env, "alice").create_repo("acme/shared").repo_id == "acme/shared"  # alice is in acme
    with pytest.raises(HfHubHTTPError) as exists:
        api.create_repo("alice/demo")
    assert exists.value.response.status_code == 409
    assert api.create_repo("alice/demo", exist_ok=True).repo_id == "alice/demo"
    assert env.client.get("/api/v1/adapters/alice/demo").json()["latest_version"] == 1


@pytest.mark.parametrize(
    ("card", "message"),
    [
        (None, "no 'adapterhub:' mapping"),
        ({"task": "sentiment", "subtask": "sst-2", "colour": "red"}, "colour"),
        ({"task": "sentiment", "subtask": "no-such-set"}, "no-such-set"),
        ({"task": "sentiment"}, "needs 'task' and 'subtask'"),
    ],
)
def test_an_invalid_card_is_refused_before_any_upload(live_sqlite, card, message):
    directory = live_sqlite.adapter_dir()
    meta = {"library_name": "adapterhub"} | ({"adapterhub": card} if card else {})
    (directory / "README.md").write_text(render_card(meta, "# x\n"))
    # huggingface_hub checks a README before uploading (create_commit) or the commit is refused (with hf_xet)
    with pytest.raises((ValueError, HfHubHTTPError)) as refused:
        _api(live_sqlite).upload_folder(repo_id="alice/demo", folder_path=directory)
    assert message in str(refused.value)
    with pytest.raises(ValueError, match=r"Invalid metadata in README\.md") as early:  # /api/validate-yaml
        _api(live_sqlite).create_commit(
            "alice/demo",
            [hf.CommitOperationAdd("README.md", (directory / "README.md").read_bytes())],
            commit_message="card only",
        )
    assert message in str(early.value)
    assert live_sqlite.client.get("/api/v1/adapters/alice/demo").status_code == 404


def test_invalid_adapters_and_layouts_are_refused_as_our_publish_refuses_them(live_sqlite):
    env = live_sqlite
    api = _api(env)
    bad = _repo_dir(env, weight_hidden_size=48)  # weights for another hidden size than the config says
    with pytest.raises(HfHubHTTPError) as refused:
        api.upload_folder(repo_id="alice/demo", folder_path=bad)
    assert refused.value.response.status_code == 422 and "hidden size 48" in str(refused.value)
    no_card = env.adapter_dir()
    with pytest.raises(HfHubHTTPError, match=r"needs a README\.md"):
        api.upload_folder(repo_id="alice/demo", folder_path=no_card)
    nested = _repo_dir(env)
    (nested / "sub").mkdir()
    (nested / "sub" / "x.json").write_text("{}")
    with pytest.raises(HfHubHTTPError, match="flat"):
        api.upload_folder(repo_id="alice/demo", folder_path=nested)
    dotfile = _repo_dir(env)
    (dotfile / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    with pytest.raises(HfHubHTTPError, match="gitattributes"):
        api.upload_folder(repo_id="alice/demo", folder_path=dotfile)
    with pytest.raises(HfHubHTTPError, match="'main' only"):
        api.upload_folder(repo_id="alice/demo", folder_path=_repo_dir(env), revision="v1")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("alice/demo")  # nothing was published


def test_raw_commit_bodies_are_refused_in_the_hubs_shape(live_sqlite):
    env = live_sqlite
    first = _api(env).upload_folder(repo_id="alice/demo", folder_path=_repo_dir(env)).oid
    url = f"{env.url}/api/models/alice/demo/commit/main"
    auth = env.auth("alice") | {"Content-Type": "application/x-ndjson"}

    def post(*lines: Any, raw: bytes | None = None) -> httpx.Response:
        body = raw if raw is not None else b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        return httpx.post(url, content=body, headers=auth)

    header = {"key": "header", "value": {"summary": "x", "description": ""}}
    cases = [
        (post(raw=b"{not json\n"), 400, "not JSON"),
        (post({"key": "file", "value": {"path": "a.txt", "content": ""}}), 400, "start with a 'header'"),
        (
            post(header, {"key": "lfsFile", "value": {"path": "w.bin", "oid": "0" * 64, "size": 3}}),
            400,
            "no LFS",
        ),
        (
            post(header, {"key": "file", "value": {"path": "x.txt", "content": "%%%"}}),
            400,
            "not valid base64",
        ),
        (post(header, {"key": "deletedFile", "value": {"path": "nope.txt"}}), 404, "doesn't exist"),
        (post({"key": "header", "value": {"summary": "x", "parentCommit": "f" * 40}}), 412, "not the head"),
        (post(header, {"key": "copy", "value": {}}), 400, "Unsupported commit operation"),
    ]
    for response, status, words in cases:
        assert response.status_code == status, response.text
        assert words in response.json()["error"] and words in response.headers["x-error-message"]
    big = httpx.post(url, content=b"x" * (6 * 1024 * 1024), headers=auth)  # over 4/3 of the 4 MiB test limit
    assert big.status_code == 413 and "limit" in big.json()["error"]
    unauthenticated = httpx.post(url, content=b"{}\n")
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["x-error-message"] == "Invalid credentials in Authorization header"
    ok = post({"key": "header", "value": {"summary": "x", "parentCommit": first}})  # no change: same version
    assert ok.status_code == 200 and ok.json()["commitOid"] == first
    assert env.client.get("/api/v1/adapters/alice/demo").json()["latest_version"] == 1


def test_card_keys_of_the_readme_metadata_are_the_upload_cards_fields():
    # hf_card.py is read by clients too, so it names the keys instead of importing the server's pydantic Card;
    # the two lists must stay one.
    from adapterhub.hub.hf_card import CARD_KEYS
    from adapterhub.hub.server.publish import Card

    assert sorted(CARD_KEYS) == sorted(Card.model_fields)

"""The client against a real server on loopback: resolve + download into the cache, offline mode, errors, push,
search, info, login, and the command line."""

from __future__ import annotations

import json
import os
import stat

import hubkit
import pytest

from adapterhub.errors import AdapterHubError, AdapterNotFoundError, IncompatibleModelError
from adapterhub.hub import client
from adapterhub.hub.errors import (
    AmbiguousIdentifierError,
    HubAuthError,
    HubConnectionError,
    HubIntegrityError,
    HubModelMismatchError,
    HubNotFoundError,
    HubOfflineError,
    InvalidIdentifierError,
)

MODEL = {"model_type": "bert", "model_name": "tiny-bert", "hidden_size": 32}


@pytest.fixture
def live(sqlite_env, monkeypatch):
    with hubkit.ThreadServer(sqlite_env.app) as server:
        monkeypatch.setenv("ADAPTERHUB_HUB_URL", server.url)
        sqlite_env.url = server.url
        yield sqlite_env


def _push(env, owner, name, subtask="sst-2", user="alice", **kw):
    return client.push_adapter_dir(
        env.adapter_dir(name=name, **kw),
        owner=owner,
        name=name,
        task="sentiment",
        subtask=subtask,
        license="mit",
        metrics={"accuracy": 0.9},
        token=env.tokens[user],
    )


def test_resolve_download_and_cache(live):
    pushed = _push(live, "alice", "bert-sst2", id2label={0: "neg", 1: "pos"})
    assert pushed["version"] == 1
    path = client.resolve_to_local_dir("sentiment/sst-2@alice", **MODEL)
    assert (path / "adapter_config.json").is_file() and (path / "adapter.safetensors").is_file()
    assert path.name == pushed["sha256"] and path.parent.parent == client.cache_dir()
    again = client.resolve_to_local_dir("sst-2", **MODEL)
    assert again == path
    detail = client.info("@alice/bert-sst2")
    assert detail["downloads"] == 1  # the second resolution was served from the cache
    assert detail["versions"][0]["sha256"] == pushed["sha256"]
    # offline: the cached resolutions work, anything else fails clearly
    assert client.resolve_to_local_dir("sst-2", offline=True, **MODEL) == path
    assert client.resolve_to_local_dir("@alice/bert-sst2", offline=True, **MODEL) == path
    assert client.resolve_to_local_dir("@alice/bert-sst2:1", offline=True, **MODEL) == path
    with pytest.raises(HubOfflineError) as err:
        client.resolve_to_local_dir("imdb", offline=True, **MODEL)
    msg = str(err.value)
    assert "'imdb'" in msg and "not in the cache" in msg and "sst-2" in msg and "adapterhub pull" in msg
    assert isinstance(err.value, AdapterNotFoundError)
    with pytest.raises(HubOfflineError):
        client.resolve_to_local_dir("@alice/bert-sst2:2", offline=True, **MODEL)
    with pytest.raises(HubOfflineError):
        client.resolve_to_local_dir(
            "sst-2", offline=True, model_type="bert", model_name="tiny-bert", hidden_size=64
        )


@pytest.mark.parametrize("var", ["ADAPTERHUB_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_environment_variables(live, monkeypatch, var):
    _push(live, "alice", "bert-sst2")
    monkeypatch.setenv(var, "1")
    with pytest.raises(HubOfflineError, match="Nothing is cached"):
        client.resolve_to_local_dir("sst-2", **MODEL)
    path = client.resolve_to_local_dir("sst-2", offline=False, **MODEL)
    assert client.resolve_to_local_dir("sst-2", **MODEL) == path
    # offline never talks to the hub, even a dead one
    assert client.resolve_to_local_dir("sst-2", hub_url=live.url, **MODEL) == path


def test_client_errors_carry_candidates(live):
    _push(live, "alice", "bert-sst2")
    _push(live, "acme", "other-sst2", reduction_factor=4)
    with pytest.raises(AmbiguousIdentifierError) as err:
        client.resolve_to_local_dir("sst-2", **MODEL)
    text = str(err.value)
    assert "@acme/other-sst2" in text and "@alice/bert-sst2" in text and "sentiment/sst-2@acme" in text
    assert err.value.details["candidates"] == ["@acme/other-sst2", "@alice/bert-sst2"]
    assert isinstance(err.value, AdapterNotFoundError)
    with pytest.raises(HubNotFoundError, match="sentiment/sst-2"):
        client.resolve_to_local_dir("sst", **MODEL)
    with pytest.raises(HubNotFoundError, match="@alice/bert-sst2:1"):
        client.resolve_to_local_dir("@alice/bert-sst2:3", **MODEL)
    with pytest.raises(HubModelMismatchError) as err:
        client.resolve_to_local_dir(
            "@alice/bert-sst2", model_type="bert", model_name="tiny-bert", hidden_size=768
        )
    assert isinstance(err.value, IncompatibleModelError)
    with pytest.raises(InvalidIdentifierError):
        client.resolve_to_local_dir("a/b/c", **MODEL)
    with pytest.raises(HubNotFoundError, match="config"):
        client.resolve_to_local_dir("sst-2@alice", config="houlsby", **MODEL)
    assert client.resolve_to_local_dir("sst-2", config="pfeiffer[reduction_factor=4]", **MODEL).is_dir()
    assert not any((client.cache_dir() / "adapters").glob(".tmp-*"))


def test_corrupted_download_is_discarded(live):
    pushed = _push(live, "alice", "bert-sst2")
    blob = live.hub.storage.local_path(f"blobs/sha256/{pushed['sha256'][:2]}/{pushed['sha256']}.tar.gz")
    data = bytearray(blob.read_bytes())
    data[-5] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(HubIntegrityError, match="checksum"):
        client.resolve_to_local_dir("sst-2", **MODEL)
    assert not client.cached_adapter_dir(pushed["sha256"]).exists()
    assert not any((client.cache_dir() / "adapters").iterdir())


def test_unreachable_hub(monkeypatch):
    url = f"http://127.0.0.1:{hubkit.free_port()}"
    with pytest.raises(HubConnectionError, match="Cannot reach the hub"):
        client.resolve_to_local_dir("sst-2", hub_url=url, **MODEL)
    with pytest.raises(AdapterHubError):
        client.resolve_to_local_dir("sst-2", hub_url="ftp://x", **MODEL)


@pytest.mark.parametrize(
    ("missing", "advice"),
    [("torch", "pip install torch"), ("adapterhub.io.manifest", "reinstall adapterhub")],
)
def test_model_check_never_skipped_when_its_import_fails(live, monkeypatch, missing, advice):
    """The check that a download fits the model needs adapterhub.io.manifest (and torch); when that import
    fails, loading stops with an error naming what is missing instead of skipping the check."""
    import builtins

    _push(live, "alice", "bert-sst2")
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "adapterhub.io.manifest":
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", failing_import)
    with pytest.raises(ImportError) as err:
        client.resolve_to_local_dir("sst-2", **MODEL)
    monkeypatch.setattr(builtins, "__import__", real_import)
    assert isinstance(err.value, AdapterHubError) and err.value.code == "missing_dependency"
    msg = str(err.value)
    assert "@alice/bert-sst2:1" in msg and repr(missing) in msg and advice in msg and "not loaded" in msg
    assert isinstance(err.value.__cause__, ModuleNotFoundError)
    with pytest.raises(HubOfflineError):  # nothing was recorded as resolved
        client.resolve_to_local_dir("sst-2", offline=True, **MODEL)
    assert client.resolve_to_local_dir("sst-2", **MODEL).is_dir()  # with the import back, the check runs


def test_push_errors_and_login(live):
    with pytest.raises(HubAuthError, match="adapterhub login"):
        client.push_adapter_dir(live.adapter_dir(), owner="alice", task="sentiment", subtask="sst-2")
    with pytest.raises(HubAuthError):
        client.push_adapter_dir(
            live.adapter_dir(), owner="alice", task="sentiment", subtask="sst-2", token="ahub_x"
        )
    path = client.login(live.tokens["alice"])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == {live.url: live.tokens["alice"]}
    out = client.push_adapter_dir(
        live.adapter_dir(name="named-in-config"), owner="alice", task="sentiment", subtask="imdb"
    )
    assert out["id"] == "@alice/named-in-config"
    assert client.whoami()["name"] == "alice"
    assert client.search("named")["items"][0]["id"] == "@alice/named-in-config"
    assert client.search(subtask="imdb", model_type="bert")["total"] == 1
    info = client.info("imdb", **MODEL)
    assert info["resolved"] == "@alice/named-in-config:1"
    with pytest.raises(AdapterHubError, match="depends on the model"):
        client.info("imdb")
    with pytest.raises(AdapterHubError, match="not a directory"):
        client.push_adapter_dir(live.tmp / "missing", owner="alice")


def test_cli_round_trip(live, capsys, monkeypatch):
    from adapterhub.cli import main

    d = live.adapter_dir(name="cli-adapter")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(live.tokens["alice"] + "\n"))
    assert main(["login"]) == 0
    assert "logged in as @alice" in capsys.readouterr().out
    assert (
        main(
            [
                "push",
                str(d),
                "--task",
                "sentiment",
                "--subtask",
                "sst-2",
                "--metric",
                "accuracy=0.875",
                "--license",
                "mit",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("published @alice/cli-adapter:1")
    assert main(["search", "cli", "--model-type", "bert"]) == 0
    out = capsys.readouterr().out
    assert "@alice/cli-adapter" in out and "accuracy=0.875" in out and "1 adapter(s)" in out
    assert main(["info", "@alice/cli-adapter"]) == 0
    out = capsys.readouterr().out
    assert "sentiment/sst-2@alice" in out and "sha256" in out
    assert (
        main(["pull", "sst-2", "--model-type", "bert", "--model-name", "tiny-bert", "--hidden-size", "32"])
        == 0
    )
    pulled = capsys.readouterr().out.strip()
    assert (client.cache_dir() / "adapters") in __import__("pathlib").Path(pulled).parents
    assert main(["pull", "@alice/cli-adapter:1"]) == 0
    assert capsys.readouterr().out.strip() == pulled
    assert main(["pull", "sst-2"]) == 2
    assert "depends on the model" in capsys.readouterr().err
    assert main(["push", str(d), "--task", "sentiment", "--subtask", "sst", "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert "no subtask 'sst'" in err and "sentiment/sst-2" in err
    assert main(["push", str(d), "--metric", "accuracy"]) == 2
    assert main(["info", "sst"]) == 2


def test_cli_admin_commands(tmp_path, capsys):
    from adapterhub.cli import main

    db = ["--db", f"sqlite:///{tmp_path / 'h.db'}", "--storage", str(tmp_path / "st")]
    assert main(["hub", "seed", *db]) == 0
    assert "7 tasks" in capsys.readouterr().out
    assert main(["hub", "seed", *db]) == 0
    assert "added 0 tasks" in capsys.readouterr().out
    assert main(["hub", "create-user", "root", "--admin", *db]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("ahub_")
    assert main(["hub", "create-user", "root", *db]) == 2
    assert "taken" in capsys.readouterr().err
    assert main(["hub", "create-token", "root", *db]) == 0
    assert capsys.readouterr().out.strip().startswith("ahub_")
    assert main(["hub", "create-org", "lab", "--member", "root", *db]) == 0
    assert main(["hub", "create-task", "summarization", "--subtask", "xsum", "--metric", "rouge2", *db]) == 0
    assert main(["hub", "create-language", "yo", *db]) == 0
    assert main(["hub", "create-org", "lab2", "--member", "ghost", *db]) == 2
    assert "no user or organisation 'ghost'" in capsys.readouterr().err

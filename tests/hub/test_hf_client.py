"""The Hugging Face Hub client: ``model.push_adapter_to_hf`` in each layout with a model card,
``model.load_adapter("owner/repo", source="hf", revision=...)`` with identical outputs, the ``HF_*`` variables
(endpoint, token, HF_HOME cache, offline), errors, and ``adapterhub pull/push --hf``. The Hub is our hub's file API,
live on loopback."""

from __future__ import annotations

from pathlib import Path

import hubkit
import pytest
import torch

import adapterhub
from adapterhub.cli import main
from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.hub import hf
from adapterhub.hub.errors import HubNotFoundError, HubOfflineError, HubValidationError
from adapterhub.hub.hf_card import split_card
from tiny_models import build, make_inputs, perturb

pytest.importorskip("huggingface_hub")
CONFIGS = {
    "adapterhub": "pfeiffer[reduction_factor=4]",
    "adapters": "pfeiffer[reduction_factor=4]",
    "peft": "lora[r=4]",
}
LIBRARY = {"adapterhub": "adapterhub", "adapters": "adapter-transformers", "peft": "peft"}


@pytest.fixture
def live(sqlite_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_HUB_FILE_CACHE", str(tmp_path / "file-cache"))
    for var in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    with hubkit.ThreadServer(sqlite_env.app) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", sqlite_env.tokens["alice"])
        sqlite_env.url = server.url
        yield sqlite_env


def _model():
    model = adapterhub.init(build("bert"))
    model.config.name_or_path = "tiny-bert"
    return model


def _trained(config: str, seed: int = 1):
    model = _model()
    model.add_adapter("sst", config, set_active=True)
    perturb(model._adapterhub.adapters["sst"], std=0.1, seed=seed)
    return model


def _hidden(model):
    with torch.no_grad():
        return model(**make_inputs()).last_hidden_state


@pytest.mark.parametrize("layout", ["adapterhub", "adapters", "peft"])
def test_push_to_hf_and_load_back_in_each_layout(live, layout):
    source = _trained(CONFIGS[layout])
    expected = _hidden(source)
    repo = f"alice/sst-{layout}"
    result = source.push_adapter_to_hf(
        repo,
        "sst",
        layout=layout,
        task="sentiment",
        subtask="sst-2",
        metrics={"accuracy": 0.91},
        license="mit",
    )
    assert result["repo_id"] == repo and len(result["commit"]) == 40
    target = _model()
    name = target.load_adapter(repo, source="hf", set_active=True, load_as="from-hf")
    assert name == "from-hf"
    torch.testing.assert_close(_hidden(target), expected, atol=1e-6, rtol=0)
    assert not torch.allclose(_hidden(_model()), expected, atol=1e-3)

    folder = hf.download_adapter_repo(repo)
    assert folder.name == result["commit"] and (Path(live.tmp) / "hf-home" / "hub").is_dir()
    meta, body = split_card((folder / "README.md").read_text())
    assert meta["library_name"] == LIBRARY[layout] and meta["base_model"] == "tiny-bert"
    method = "lora" if layout == "peft" else "bottleneck"
    assert {method, "sentiment", "sst-2"} <= set(meta["tags"]) and meta["datasets"] == ["sst-2"]
    assert meta["model-index"][0]["results"][0]["metrics"] == [{"type": "accuracy", "value": 0.91}]
    assert repo in body
    detail = live.client.get(f"/api/v1/adapters/{repo}").json()  # published on our hub with that card
    assert (detail["task"], detail["subtask"], detail["license"]) == ("sentiment", "sst-2", "mit")
    assert detail["method"] == method and detail["metrics"] == {"accuracy": 0.91}


def test_revisions_cache_and_offline(live, monkeypatch):
    first, second = _trained("lora[r=4]", seed=1), _trained("lora[r=4]", seed=2)
    c1 = first.push_adapter_to_hf("alice/sst", "sst", task="sentiment", subtask="sst-2")["commit"]
    second.push_adapter_to_hf("alice/sst", "sst", task="sentiment", subtask="sst-2")
    for revision, model in ((None, second), ("main", second), ("v1", first), (c1, first), ("v2", second)):
        target = _model()
        target.load_adapter("alice/sst", source="hf", revision=revision, set_active=True)
        torch.testing.assert_close(_hidden(target), _hidden(model), atol=1e-6, rtol=0)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # only the cache under HF_HOME from here on
    for revision, model in ((None, second), (c1, first)):
        target = _model()
        target.load_adapter("alice/sst", source="hf", revision=revision, set_active=True)
        torch.testing.assert_close(_hidden(target), _hidden(model), atol=1e-6, rtol=0)
    with pytest.raises(HubOfflineError, match="not in the Hugging Face cache"):
        _model().load_adapter("alice/never-downloaded", source="hf")
    monkeypatch.setenv("HF_HOME", str(live.tmp / "empty-home"))
    with pytest.raises(HubOfflineError, match="adapterhub pull --hf alice/sst"):
        _model().load_adapter("alice/sst", source="hf")


def test_errors_say_what_is_wrong(live, monkeypatch):
    _trained("lora[r=4]").push_adapter_to_hf("alice/sst", "sst", task="sentiment", subtask="sst-2")
    with pytest.raises(HubNotFoundError, match="no repo 'alice/nothing'"):
        _model().load_adapter("alice/nothing", source="hf")
    with pytest.raises(HubNotFoundError, match="no revision 'v9'"):
        _model().load_adapter("alice/sst", source="hf", revision="v9")
    with pytest.raises(ConfigError, match="Unknown source"):
        _model().load_adapter("alice/sst", source="s3")
    with pytest.raises(ConfigError, match="revision= is for source='hf'"):
        _model().load_adapter("alice/sst", revision="v1")
    # a repo without adapter_config.json at its top: asking for another config name shows the path the user gets
    monkeypatch.setattr(hf, "CONFIG_FILE", "missing_config.json")
    with pytest.raises(
        AdapterFileError,
        match=r"holds no adapter .* it holds: README\.md, adapter\.safetensors, adapter_config\.json\.",
    ):
        hf.download_adapter_repo("alice/sst")
    assert "looks like a full model" in hf.describe_repo("x/y", ["config.json", "model.safetensors"])
    assert hf.describe_repo("x/y", []) == "x/y is empty."
    with pytest.raises(HubValidationError, match="needs 'task' and 'subtask'"):  # our hub refuses the card
        _trained("lora[r=4]").push_adapter_to_hf("alice/no-task", "sst")


def test_cli_push_and_pull_hf(live, tmp_path, capsys):
    model = _trained("pfeiffer[reduction_factor=4]")
    saved = model.save_adapter(tmp_path / "saved", "sst")
    before = sorted(p.name for p in saved.iterdir())
    code = main(
        ["push", str(saved), "--hf", "alice/cli-sst", "--task", "sentiment", "--subtask", "sst-2",
         "--metric", "accuracy=0.8", "--license", "mit"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert "uploaded alice/cli-sst" in capsys.readouterr().out
    assert sorted(p.name for p in saved.iterdir()) == before  # the folder itself is not changed
    assert main(["pull", "--hf", "alice/cli-sst", "--revision", "v1"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert sorted(p.name for p in folder.iterdir()) == sorted([*before, "README.md"])
    assert live.client.get("/api/v1/adapters/alice/cli-sst").json()["metrics"] == {"accuracy": 0.8}
    assert main(["pull", "--hf", "alice/nothing"]) == 2
    assert "no repo 'alice/nothing'" in capsys.readouterr().err

"""The model API end to end with a live hub: push_adapter from one model, load_adapter by name into another."""

from __future__ import annotations

import hubkit
import pytest
import torch

import adapterhub
from adapterhub.errors import AdapterNotFoundError, IncompatibleModelError
from tiny_models import build, make_inputs, perturb


@pytest.fixture
def live(sqlite_env, monkeypatch):
    with hubkit.ThreadServer(sqlite_env.app) as server:
        monkeypatch.setenv("ADAPTERHUB_HUB_URL", server.url)
        yield sqlite_env


def trained_model():
    model = adapterhub.init(build("bert", "classification", num_labels=2))
    model.config.name_or_path = "tiny-bert"
    model.add_adapter("rt-pfeiffer", config="pfeiffer[reduction_factor=4]", set_active=True)
    perturb(model._adapterhub.adapters["rt-pfeiffer"])
    return model


def test_push_then_load_by_every_identifier_form(live):
    source = trained_model()
    info = source.push_adapter(
        "rt-pfeiffer",
        owner="alice",
        task="sentiment",
        subtask="sst-2",
        license="mit",
        metrics={"accuracy": 0.9},
        token=live.tokens["alice"],
    )
    assert info["version"] == 1
    inputs = make_inputs()
    expected = source(**inputs).logits
    for identifier in ("sentiment/sst-2@alice", "sst-2", "@alice/rt-pfeiffer", "@alice/rt-pfeiffer:1"):
        target = adapterhub.init(build("bert", "classification", num_labels=2))
        target.config.name_or_path = "tiny-bert"
        name = target.load_adapter(identifier, set_active=True)
        assert name == "rt-pfeiffer"
        assert torch.allclose(target(**inputs).logits, expected, atol=1e-6)


def test_load_errors_leave_the_model_unchanged(live):
    source = trained_model()
    source.push_adapter(
        "rt-pfeiffer", owner="alice", task="sentiment", subtask="sst-2", token=live.tokens["alice"]
    )
    target = adapterhub.init(build("bert", "classification", num_labels=2))
    with pytest.raises(AdapterNotFoundError, match="sst-2"):
        target.load_adapter("sst")  # close match suggested
    other = adapterhub.init(build("bert", "classification", num_labels=2, hidden_size=64))
    with pytest.raises((AdapterNotFoundError, IncompatibleModelError)):
        other.load_adapter("@alice/rt-pfeiffer")  # made for hidden size 32
    assert not target.adapters and not other.adapters


def test_adapters_library_layout_publishes_and_loads_with_identical_outputs(live):
    import json
    from pathlib import Path

    import transformers

    from adapterhub.hub import client

    case = Path(__file__).resolve().parents[1] / "fixtures" / "adapters_lib" / "bert_seq_bn"
    expected = json.loads((case / "expected.json").read_text())
    info = client.push_adapter_dir(
        case / "adapter",
        owner="alice",
        name="their-seq-bn",
        task="sentiment",
        subtask="sst-2",
        token=live.tokens["alice"],
    )
    assert info["version"] == 1
    model = adapterhub.init(transformers.AutoModel.from_pretrained(case / "base").eval())
    model.config.name_or_path = "tiny-random-bert"  # the model name that library wrote into the adapter
    name = model.load_adapter("@alice/their-seq-bn", set_active=True)
    inputs = {k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, torch.tensor(expected["logits"]), atol=1e-4)
    assert name == expected["adapter_name"]

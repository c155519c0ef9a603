"""Publishing validates every method's files: each method publishes, is found by ``method=``, and loads back by
name with identical outputs; a mis-shaped weight is refused with a message naming it; peft-layout and
`adapters`-layout directories publish too."""

from __future__ import annotations

import json
from pathlib import Path

import hubkit
import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub
from adapterhub.hub import client
from adapterhub.hub.errors import HubError
from tiny_models import build, make_inputs, perturb

METHODS = {
    "lora": "lora[r=4,targets=[q,v,ffn_in]]",
    "dora": "lora[use_dora=true,r=4]",
    "ia3": "ia3",
    "prefix_tuning": "prefix_tuning[prefix_length=4]",
    "parallel": "par_bn[reduction_factor=4]",
    "compacter": "compacter[reduction_factor=4]",
    "vera": "vera[r=4,targets=[q,v],save_projection=false]",
    "oft": "oft[oft_block_size=8,targets=[q,v]]",
    "boft": "boft[boft_block_size=4,targets=[q,v]]",
    "reft": "noreft[prefix_positions=2,suffix_positions=1,r=2,layers=[1]]",
}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "adapters_lib"


@pytest.fixture
def live(sqlite_env, monkeypatch):
    with hubkit.ThreadServer(sqlite_env.app) as server:
        monkeypatch.setenv("ADAPTERHUB_HUB_URL", server.url)
        yield sqlite_env


def _model():
    model = adapterhub.init(build("bert"))
    model.config.name_or_path = "tiny-bert"
    return model


def _hidden(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _push(env, path, name, **kwargs):
    return client.push_adapter_dir(
        path, owner="alice", name=name, task="sentiment", subtask="sst-2", token=env.tokens["alice"], **kwargs
    )


def test_every_method_publishes_filters_and_loads_back(live, tmp_path):
    inputs = make_inputs()
    expected = {}
    for method, config in METHODS.items():
        source = _model()
        name = f"m-{method.replace('_', '-')}"
        source.add_adapter(name, config=config, set_active=True)
        perturb(source._adapterhub.adapters[name], std=0.1)
        expected[name] = _hidden(source, inputs)
        source.save_adapter(tmp_path / name, name)
        assert _push(live, tmp_path / name, name)["version"] == 1
    for method in METHODS:
        found = live.client.get("/api/v1/adapters", params={"method": method}).json()
        assert [item["method"] for item in found["items"]] == [method], method
    assert live.client.get("/api/v1/adapters", params={"method": "nope"}).json()["total"] == 0
    for name, hidden in expected.items():
        target = _model()
        assert target.load_adapter(f"@alice/{name}", set_active=True) == name
        torch.testing.assert_close(_hidden(target, inputs), hidden, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["lora", "ia3", "prefix_tuning", "compacter"])
def test_a_mis_shaped_weight_is_refused(live, tmp_path, method):
    model = _model()
    model.add_adapter("bad", config=METHODS[method])
    model.save_adapter(tmp_path / "bad", "bad")
    weights = load_file(tmp_path / "bad" / "adapter.safetensors")
    key = sorted(weights)[0]
    weights[key] = weights[key].flatten()[:-1].clone()  # one entry short, another shape
    save_file(weights, tmp_path / "bad" / "adapter.safetensors")
    with pytest.raises(HubError) as error:
        _push(live, tmp_path / "bad", "bad")
    message = str(error.value)
    assert key in message and "do not fit its config" in message, message
    assert live.client.get("/api/v1/adapters", params={"q": "bad"}).json()["total"] == 0


def test_peft_lora_dir_publishes_and_loads_by_name(live, tmp_path):
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(
        build("bert"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"])
    ).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param_name, param in theirs.named_parameters():
            if "lora_" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(tmp_path / "peft-lora")
    inputs = make_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).last_hidden_state
    with pytest.raises(HubError, match="model_type"):  # peft's files do not say the model type
        _push(live, tmp_path / "peft-lora", "peft-lora")
    info = _push(live, tmp_path / "peft-lora", "peft-lora", model_type="bert")
    assert info["version"] == 1
    detail = live.client.get("/api/v1/adapters/alice/peft-lora").json()
    assert detail["method"] == "lora" and detail["model_type"] == "bert"
    target = _model()
    name = target.load_adapter("@alice/peft-lora", set_active=True)
    torch.testing.assert_close(_hidden(target, inputs), expected, atol=1e-5, rtol=0)
    assert target.adapters[name].method == "lora"


def test_adapters_library_ia3_publishes_and_loads_by_name(live):
    import transformers

    case = FIXTURES / "bert_ia3"
    expected = json.loads((case / "expected.json").read_text())
    _push(live, case / "adapter", "their-ia3")
    assert live.client.get("/api/v1/adapters", params={"method": "ia3"}).json()["total"] == 1
    model = adapterhub.init(transformers.AutoModel.from_pretrained(case / "base").eval())
    model.config.name_or_path = "tiny-random-bert"
    model.load_adapter("@alice/their-ia3", set_active=True)
    inputs = {k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask")}
    torch.testing.assert_close(
        _hidden(model, inputs), torch.tensor(expected["last_hidden_state"]), atol=1e-4, rtol=0
    )

"""Adapters that target modules by name (LoRA ``target_modules``, LN tuning, OFT ``r`` + ``block_share``) are
validated from their files alone (``inspect_adapter_dir``), publish to the embedded hub and load back by name with
identical outputs; a file whose modules or shapes do not fit its config is refused, naming the problem."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hubkit
import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub
from adapterhub.errors import AdapterFileError
from adapterhub.hub import client
from adapterhub.hub.errors import HubError
from adapterhub.io.manifest import inspect_adapter_dir
from adapterhub.spec.configs import canonical_json, resolve_config, sha256_hex
from tiny_models import build, make_inputs, perturb


@pytest.fixture
def live(sqlite_env, monkeypatch):
    with hubkit.ThreadServer(sqlite_env.app) as server:
        monkeypatch.setenv("ADAPTERHUB_HUB_URL", server.url)
        yield sqlite_env


def _push(env, path, name):
    return client.push_adapter_dir(
        path, owner="alice", name=name, task="sentiment", subtask="sst-2", token=env.tokens["alice"]
    )


def _model(arch, kind):
    model = adapterhub.init(build(arch, kind))
    model.config.name_or_path = f"tiny-{arch}"
    return model


def _out(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


@pytest.mark.parametrize(
    ("arch", "kind", "config"),
    [
        (
            "llama",
            "causal_lm",
            {
                "method": "lora",
                "r": 4,
                "target_modules": ["q_proj", "v_proj", "down_proj"],
                "rank_pattern": {"down_proj": 2},
            },
        ),
        ("bert", "base", "ln_tuning"),
        ("bert", "base", "lora[r=4,target_modules=[query,dense]]"),  # `dense` includes the pooler (by_name.*)
    ],
)
def test_by_name_adapter_publishes_and_loads_back_identically(live, tmp_path, arch, kind, config):
    inputs = make_inputs()
    source = _model(arch, kind)
    source.add_adapter("byname", config=config, set_active=True)
    perturb(source._adapterhub.adapters["byname"], std=0.2)
    expected = _out(source, inputs)
    source.save_adapter(tmp_path / "byname", "byname")
    manifest = inspect_adapter_dir(tmp_path / "byname")
    assert manifest.method == resolve_config(config).method and manifest.model_type == arch
    assert manifest.hidden_size == 32 and manifest.num_layers == 2
    assert _push(live, tmp_path / "byname", "byname")["version"] == 1
    detail = live.client.get("/api/v1/adapters/alice/byname").json()
    assert detail["method"] == manifest.method and detail["model_type"] == arch
    target = _model(arch, kind)
    assert not torch.equal(_out(target, inputs), expected)
    assert target.load_adapter("@alice/byname", set_active=True) == "byname"
    torch.testing.assert_close(_out(target, inputs), expected, atol=1e-6, rtol=0)


def _rewrite_config(path: Path, config: str) -> None:
    """Give the directory another config (with its hash, so only the weights' fit is in question)."""
    meta = json.loads((path / "adapter_config.json").read_text())
    meta["config"] = resolve_config(config).to_dict()
    meta["config_hash"] = sha256_hex(canonical_json(meta["config"]))
    (path / "adapter_config.json").write_text(json.dumps(meta))


def test_a_file_holding_modules_its_config_does_not_select_is_refused(live, tmp_path):
    model = _model("bert", "base")
    model.add_adapter("ln", config="ln_tuning")
    model.save_adapter(tmp_path / "ln", "ln")
    _rewrite_config(tmp_path / "ln", "ln_tuning[target_modules=[attention.output.LayerNorm]]")
    with pytest.raises(
        AdapterFileError, match=r"unexpected \['copies.encoder:layer:0:output:LayerNorm.bias'"
    ):
        inspect_adapter_dir(tmp_path / "ln")
    with pytest.raises(HubError, match="do not fit its config"):
        _push(live, tmp_path / "ln", "ln")
    model = _model("llama", "base")
    model.add_adapter("lo", config="lora[r=4,target_modules=[q_proj]]")
    model.save_adapter(tmp_path / "lo", "lo")
    _rewrite_config(tmp_path / "lo", "lora[r=2,target_modules=[q_proj]]")  # the file's rank is 4
    with pytest.raises(
        AdapterFileError, match=re.escape("wrong shapes layers.0.q.lora_A: (4, 32) != (2, 32)")
    ):
        inspect_adapter_dir(tmp_path / "lo")


def test_ln_tuning_copy_with_a_mismatched_bias_is_refused(tmp_path):
    model = _model("bert", "base")
    model.add_adapter("ln", config="ln_tuning")
    model.save_adapter(tmp_path / "ln", "ln")
    weights = load_file(tmp_path / "ln" / "adapter.safetensors")
    key = "copies.encoder:layer:1:output:LayerNorm.bias"
    weights[key] = weights[key][:-1].clone()
    save_file(weights, tmp_path / "ln" / "adapter.safetensors")
    with pytest.raises(
        AdapterFileError, match=re.escape("encoder.layer.1.output.LayerNorm' must hold weight")
    ):
        inspect_adapter_dir(tmp_path / "ln")


@pytest.mark.parametrize(
    "config",
    [
        "oft[r=4,oft_block_size=0,block_share=true,target_modules=[query,value]]",
        "oft[r=4,oft_block_size=0,block_share=true,targets=[q,v]]",
        "oft[r=4,oft_block_size=0,target_modules=[query,value]]",
    ],
)
def test_oft_by_rank_publishes_and_loads_back(live, tmp_path, config):
    """With ``r`` and ``block_share`` the file holds one block of size ``b``; the input width is ``r · b``."""
    inputs = make_inputs()
    source = _model("bert", "base")
    source.add_adapter("oft", config=config, set_active=True)
    perturb(source._adapterhub.adapters["oft"], std=0.05)
    expected = _out(source, inputs)
    source.save_adapter(tmp_path / "oft", "oft")
    assert inspect_adapter_dir(tmp_path / "oft").method == "oft"
    _push(live, tmp_path / "oft", "oft")
    target = _model("bert", "base")
    target.load_adapter("@alice/oft", set_active=True)
    torch.testing.assert_close(_out(target, inputs), expected, atol=1e-6, rtol=0)

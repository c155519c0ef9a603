"""Module paths named in an adapter's weights (``by_name.<path>.…``) must sit in layers the declared model has: both
the torch-free header check of the hub server and the full check refuse ``model.layers.7.self_attn.q_proj`` on a
model of 2 layers, naming the weight and the layer count, and accept the same file with paths inside the model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hubkit
import pytest
from safetensors.torch import load_file, save_file

import adapterhub
from adapterhub.errors import IncompatibleModelError
from adapterhub.hub import client
from adapterhub.hub.errors import HubError
from adapterhub.hub.server.header_inspect import inspect_from_headers
from adapterhub.io.manifest import inspect_adapter_dir
from adapterhub.spec.architectures import spec_for_model_type
from adapterhub.spec.module_layers import layer_of_path
from tiny_models import build


def _by_name_file(tmp_path: Path, layer_of: dict[int, int]) -> Path:
    """A llama LoRA on q_proj of layers 0 and 1, its weights renamed to by-name paths in layers ``layer_of[i]``."""
    model = adapterhub.init(build("llama", "causal_lm"))
    model.add_adapter("a", {"method": "lora", "r": 2, "target_modules": ["q_proj"]})
    directory = model.save_adapter(tmp_path / "a", "a")
    weights = load_file(directory / "adapter.safetensors")
    renamed = {}
    for key, tensor in weights.items():
        match = re.match(r"^layers\.(\d+)\.q\.(lora_[AB])$", key)
        assert match is not None, key
        layer = layer_of[int(match.group(1))]
        renamed[f"by_name.model:layers:{layer}:self_attn:q_proj.{match.group(2)}"] = tensor
    save_file(renamed, directory / "adapter.safetensors")
    return directory


def test_by_name_paths_inside_the_model_are_accepted(tmp_path):
    directory = _by_name_file(tmp_path, {0: 0, 1: 1})
    light, full = inspect_from_headers(directory), inspect_adapter_dir(directory)
    assert light.num_layers == full.num_layers == 2
    assert light.num_parameters == full.num_parameters


def test_by_name_path_past_the_last_layer_is_refused_by_both_checks(tmp_path):
    directory = _by_name_file(tmp_path, {0: 0, 1: 7})
    message = re.escape(
        "weight 'by_name.model:layers:7:self_attn:q_proj.lora_A' is for module 'model.layers.7.self_attn.q_proj' "
        "in layer 7, but the declared model has 2 layers (0 to 1)"
    )
    with pytest.raises(IncompatibleModelError, match=message):
        inspect_from_headers(directory)
    with pytest.raises(IncompatibleModelError, match=message):
        inspect_adapter_dir(directory)
    meta = json.loads((directory / "adapter_config.json").read_text())
    meta["num_layers"] = 8  # declared for a deeper model: the layers check passes
    (directory / "adapter_config.json").write_text(json.dumps(meta))
    assert inspect_from_headers(directory).num_layers == 8


def test_decoder_layers_are_numbered_after_decoder_start():
    spec = spec_for_model_type("t5")
    decoder = spec.stacks()[1].layers
    assert layer_of_path(spec, f"{decoder}.1.layer.0.SelfAttention.q", 2) == 3
    assert layer_of_path(spec, f"{spec.stacks()[0].layers}.1.layer.0.SelfAttention.q", 2) == 1
    assert layer_of_path(spec, "shared", 2) is None


def test_header_check_refuses_a_decoder_path_past_the_model(tmp_path):
    model = adapterhub.init(build("t5", "seq2seq_lm"))
    model.add_adapter("a", {"method": "lora", "r": 2, "target_modules": ["q"]})
    directory = model.save_adapter(tmp_path / "t5", "a")
    meta = json.loads((directory / "adapter_config.json").read_text())
    start, total = meta["decoder_start"], meta["num_layers"]
    assert 0 < start < total
    weights = load_file(directory / "adapter.safetensors")
    module = sorted(weights)[0].rsplit(".", 1)[0]  # one module's lora_A and lora_B move together
    for part in ("lora_A", "lora_B"):
        path = f"by_name.decoder:block:{total - start - 1}:layer:0:SelfAttention:q.{part}"
        weights[path] = weights.pop(f"{module}.{part}")
    save_file(weights, directory / "adapter.safetensors")
    inspect_from_headers(directory)  # the decoder's last layer is layer total - 1
    weights = load_file(directory / "adapter.safetensors")
    weights = {
        k.replace(f"block:{total - start - 1}:", f"block:{total - start}:"): t for k, t in weights.items()
    }
    save_file(weights, directory / "adapter.safetensors")
    with pytest.raises(
        IncompatibleModelError, match=rf"in layer {total}, but the declared model has {total} layers"
    ):
        inspect_from_headers(directory)


@pytest.fixture
def header_check(monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_HUB_WEIGHTS_CHECK", "header")


@pytest.fixture
def live_header(header_check, sqlite_env, monkeypatch):
    assert sqlite_env.hub.settings.weights_check == "header"
    with hubkit.ThreadServer(sqlite_env.app) as server:
        monkeypatch.setenv("ADAPTERHUB_HUB_URL", server.url)
        yield sqlite_env


def test_the_torch_free_server_refuses_the_publish_and_accepts_paths_inside(live_header, tmp_path):
    def push(directory, name):
        return client.push_adapter_dir(
            directory,
            owner="alice",
            name=name,
            task="sentiment",
            subtask="sst-2",
            token=live_header.tokens["alice"],
        )

    with pytest.raises(HubError, match=r"in layer 7, but the declared model has 2 layers"):
        push(_by_name_file(tmp_path / "bad", {0: 0, 1: 7}), "bad")
    assert push(_by_name_file(tmp_path / "good", {0: 0, 1: 1}), "good")["version"] == 1

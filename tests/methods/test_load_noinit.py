"""A load builds an adapter's modules only to receive the file's tensors (``AdapterModule.build_for_load``): methods
that declare ``init_on_load = False`` (LoRA, DoRA, bottleneck) skip their initialisers there, every other method keeps them. For
every registered method, save -> load through that path gives bit-equal outputs; LoRA's initialiser does not run
on a load and does on ``add_adapter``; a file missing a tensor still raises."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterhub
from adapterhub.errors import AdapterFileError
from adapterhub.methods.base import METHODS, ModelDims
from adapterhub.methods.bottleneck import uninitialised_linear
from adapterhub.methods.lora import LoRAAdapter
from adapterhub.methods.vera import VeraAdapter
from adapterhub.spec.configs import resolve_config
from tiny_models import build, make_inputs, perturb

# one config per registered method (test_every_registered_method_is_covered keeps this list whole)
CONFIGS = {
    "lora": "lora[r=4,targets=[q,v,ffn_in]]",
    "dora": "lora[use_dora=true,r=4]",
    "adalora": "adalora[init_r=4,target_r=2]",
    "loha": "loha[r=2,targets=[q,ffn_in]]",
    "lokr": "lokr",
    "vera": "vera[r=4,targets=[q,v],save_projection=false]",
    "oft": "oft[oft_block_size=8,targets=[q,v]]",
    "boft": "boft[boft_block_size=4,targets=[q,v]]",
    "ia3": "ia3",
    "bottleneck": "houlsby[reduction_factor=4]",
    "bottleneck_inv": "seq_bn_inv",
    "compacter": "compacter[reduction_factor=4]",
    "parallel": "par_bn[reduction_factor=4]",
    "prefix_tuning": "prefix_tuning[prefix_length=4]",
    "prompt_tuning": "prompt_tuning[prompt_length=3]",
    "ln_tuning": "ln_tuning",
    "reft": "noreft[prefix_positions=2,suffix_positions=1,r=2,layers=[1]]",
    "union": "unipelt",
    "gated_lora": "gated_lora",
    "gated_bottleneck": "gated_bottleneck",
    "gated_prefix_tuning": "gated_prefix_tuning[prefix_length=3]",
}
TARGETED = "lora[r=4,target_modules=[q_proj,v_proj,embed_tokens]]"  # by name, an nn.Embedding target too


def _hidden(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _saved(tmp_path, config: str, arch: str = "llama"):
    model = adapterhub.init(build(arch))
    model.add_adapter("a", config=config)
    perturb(model._adapterhub.adapters["a"], std=0.05)
    model.set_active_adapters("a")
    expected = _hidden(model, make_inputs())
    model.save_adapter(tmp_path / "a", "a")
    return expected


def test_every_registered_method_is_covered():
    assert set(CONFIGS) == set(METHODS)
    assert {resolve_config(c).method for c in CONFIGS.values()} == set(METHODS)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_round_trip_through_the_load_path_is_bit_equal(method, tmp_path):
    arch = "bert" if method in ("prefix_tuning", "gated_prefix_tuning", "union") else "llama"
    expected = _saved(tmp_path, CONFIGS[method], arch)
    fresh = adapterhub.init(build(arch))
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(_hidden(fresh, make_inputs()), expected)


def test_round_trip_by_name_with_an_embedding_target_is_bit_equal(tmp_path):
    expected = _saved(tmp_path, TARGETED)
    fresh = adapterhub.init(build("llama"))
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(_hidden(fresh, make_inputs()), expected)


def _refuse_init(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("an initialiser ran")

    for name in ("kaiming_uniform_", "normal_", "trunc_normal_", "zeros_"):
        monkeypatch.setattr(torch.nn.init, name, refuse)


@pytest.mark.parametrize("config", [CONFIGS["lora"], TARGETED])
def test_lora_load_runs_no_initialiser_and_add_does(config, tmp_path, monkeypatch):
    expected = _saved(tmp_path, config)
    fresh = adapterhub.init(build("llama"))
    _refuse_init(monkeypatch)
    fresh.load_adapter(tmp_path / "a", set_active=True)  # no initialiser runs
    assert torch.equal(_hidden(fresh, make_inputs()), expected)
    with pytest.raises(AssertionError, match="an initialiser ran"):
        fresh.add_adapter("b", config=config)


def test_the_promise_is_not_inherited(monkeypatch):
    """VeRA subclasses LoRA but builds other layers (and seeded shared projections): it is built initialised for a
    load unless it declares otherwise itself."""
    assert LoRAAdapter.__dict__["init_on_load"] is False and "init_on_load" not in VeraAdapter.__dict__
    model = adapterhub.init(build("llama"))
    dims: ModelDims = model.model_dims()
    built = []
    real = VeraAdapter.__init__

    def spy(self, *args, **kwargs):
        built.append(kwargs)
        real(self, *args, **kwargs)

    monkeypatch.setattr(VeraAdapter, "__init__", spy)
    module = VeraAdapter.build_for_load("v", resolve_config(CONFIGS["vera"]), dims)
    assert isinstance(module, VeraAdapter) and built == [{}]


@pytest.mark.parametrize("method", ["lora", "dora", "bottleneck"])
def test_declared_methods_build_without_initialisers(method, monkeypatch):
    model = adapterhub.init(build("llama"))
    config = resolve_config(CONFIGS[method])
    _refuse_init(monkeypatch)
    module = METHODS[method].build_for_load("x", config, model.model_dims())
    assert sum(p.numel() for p in module.parameters()) > 0
    with pytest.raises(AssertionError, match="an initialiser ran"):
        METHODS[method]("y", config, model.model_dims())


def test_a_base_modifying_init_still_initialises_and_round_trips(tmp_path):
    expected = _saved(tmp_path, "lora[r=4,init=pissa,targets=[q,v]]")
    fresh = adapterhub.init(build("llama"))
    fresh.load_adapter(tmp_path / "a", set_active=True)
    torch.testing.assert_close(_hidden(fresh, make_inputs()), expected, atol=1e-5, rtol=0)


def test_a_file_missing_a_tensor_still_raises(tmp_path):
    _saved(tmp_path, CONFIGS["lora"])
    path = tmp_path / "a" / "adapter.safetensors"
    tensors = load_file(path)
    dropped = sorted(k for k in tensors if "lora_B" in k)[0]
    del tensors[dropped]
    save_file(tensors, path)
    fresh = adapterhub.init(build("llama"))
    with pytest.raises(AdapterFileError, match=rf"missing \['{re.escape(dropped)}'\]"):
        fresh.load_adapter(tmp_path / "a")
    assert "a" not in fresh._adapterhub.adapters


def test_an_uninitialised_linear_is_an_nn_linear_attribute_for_attribute():
    built, real = uninitialised_linear(6, 4), torch.nn.Linear(6, 4)
    assert type(built) is torch.nn.Linear
    assert {k: v for k, v in vars(built).items() if not k.startswith("_")} == {
        k: v for k, v in vars(real).items() if not k.startswith("_")
    }
    assert set(vars(built)) == set(vars(real))
    assert {k: v.shape for k, v in built.state_dict().items()} == {
        k: v.shape for k, v in real.state_dict().items()
    }
    x = torch.randn(3, 6)
    built.load_state_dict(real.state_dict())
    assert torch.equal(built(x), real(x))

"""LN tuning on tiny BERT (LayerNorm) and Llama (RMSNorm): which norms it selects, identity when new, only the copies
train, merge / unmerge bit for bit, save / load, composition by the math (Stack of two on one norm refused by name,
row and position blocks per adapter), and what is refused."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import BatchSplit, Fuse, Stack
from adapterhub.errors import ConfigError
from adapterhub.spec.configs import LNTuningConfig, resolve_config
from method_checks import ACTIVE, check_row_blocks, check_training_step, hidden, make, make_inputs, perturb
from tiny_models import build

ARCHS = ["bert", "llama"]


@pytest.fixture
def inputs():
    return make_inputs()


def _norms(model, name="a"):
    return sorted(model._adapterhub.adapters[name].copied_paths())


def test_default_selects_the_norms_inside_the_layers():
    bert = adapterhub.init(build("bert"))
    bert.add_adapter("a", "ln_tuning")
    assert _norms(bert) == sorted(
        f"encoder.layer.{i}.{site}.LayerNorm" for i in range(2) for site in ("attention.output", "output")
    )  # the spec's post-norm sites; the embeddings' LayerNorm is outside the layers
    llama = adapterhub.init(build("llama"))
    llama.add_adapter("a", {"method": "ln_tuning", "exclude_modules": ["post_attention_layernorm"]})
    assert _norms(llama) == ["layers.0.input_layernorm", "layers.1.input_layernorm"]
    bert.add_adapter("b", "ln_tuning[target_modules=[LayerNorm]]")  # peft's form: by suffix, anywhere
    assert "embeddings.LayerNorm" in _norms(bert, "b") and len(_norms(bert, "b")) == 5


@pytest.mark.parametrize("arch", ARCHS)
def test_new_adapter_is_the_identity_and_only_the_copies_train(arch, inputs):
    model = adapterhub.init(build(arch))
    bare = hidden(model, inputs)
    model.add_adapter("a", "ln_tuning")
    assert torch.equal(hidden(model, inputs, "a"), bare)
    changed = check_training_step(model, inputs)
    adapter = {n for n in changed if n.startswith("_adapterhub.adapters.a.")}
    assert adapter and all(".copies." in n for n in adapter)
    assert {p.requires_grad for n, p in model.named_parameters() if not n.startswith("_adapterhub")} == {
        False
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_merge_writes_the_tuned_norm_and_unmerge_restores_it_bit_for_bit(arch, inputs):
    model = make(arch, "ln_tuning", names=("a",))
    model.set_active_adapters("a")
    unmerged = hidden(model, inputs, ACTIVE)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("_adapterhub")}
    copies = model._adapterhub.adapters["a"].copies
    model.merge_adapter("a")
    for key, copy in copies.items():
        assert torch.equal(model.get_submodule(key.replace(":", ".")).weight, copy.weight)
    assert torch.equal(hidden(model, inputs, ACTIVE), unmerged)
    model.unmerge_adapter()
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters() if n in weights)
    assert torch.equal(hidden(model, inputs, ACTIVE), unmerged)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_round_trip(arch, inputs, tmp_path):
    model = make(arch, "ln_tuning", names=("a",))
    expected = hidden(model, inputs, "a")
    model.save_adapter(tmp_path / "a", "a")
    fresh = adapterhub.init(build(arch))
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(hidden(fresh, inputs, ACTIVE), expected)
    assert not torch.equal(expected, hidden(fresh, inputs))


@pytest.mark.parametrize("arch", ARCHS)
def test_row_and_position_blocks_run_each_adapter_s_copy(arch, inputs):
    model = make(arch, "ln_tuning")
    check_row_blocks(model, inputs)
    out = hidden(model, inputs, BatchSplit("a", None, batch_sizes=[2, 1]))
    torch.testing.assert_close(out[:2], hidden(model, {k: v[:2] for k, v in inputs.items()}, "a"))
    torch.testing.assert_close(out[2:], hidden(model, {k: v[2:] for k, v in inputs.items()}, None))


def test_stack_of_two_on_one_norm_is_refused_by_name_and_other_points_compose(inputs):
    model = make("bert", "ln_tuning")
    with pytest.raises(ConfigError, match=r"'b' replaces the norm .*no single answer"):
        hidden(model, inputs, Stack("a", "b"))
    model.add_adapter("lora", "lora[r=2]")
    perturb(model._adapterhub.adapters["lora"], seed=3)
    stacked = hidden(model, inputs, Stack("lora", "a"))  # LoRA on q/v, the norm copy of 'a': different points
    assert not torch.equal(stacked, hidden(model, inputs, "a"))
    with pytest.raises(ConfigError, match="Fuse cannot hold 'a'"):
        model.set_active_adapters(Fuse("a", "b"))


def test_config_and_selection_errors():
    with pytest.raises(ConfigError, match="Valid keys: target_modules, exclude_modules"):
        resolve_config({"method": "ln_tuning", "r": 4})
    with pytest.raises(ConfigError, match="adapts normalisation modules"):
        LNTuningConfig(target_modules="all-linear")
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=r"'encoder\.layer\.0\.attention\.self\.query', a Linear"):
        model.add_adapter("a", {"method": "ln_tuning", "target_modules": ["query"]})
    with pytest.raises(ConfigError, match="selects nothing"):
        model.add_adapter("a", {"method": "ln_tuning", "target_modules": ["no_such_norm"]})
    assert resolve_config("ln_tuning[target_modules=[LayerNorm]]").target_modules == ("LayerNorm",)

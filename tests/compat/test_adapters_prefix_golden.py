"""Prefix-tuning adapters saved by the `adapters` library (1.3.0) load into ours with the same last hidden states
(within 1e-4): the reparametrised (MLP) form and, where present, their ejected flat form. The decoder fixtures were
made with eager attention (that library's decoder prefix tuning is wrong under sdpa); ours gives the same values
under both."""

import json

import pytest
import torch
import transformers

import adapterhub
from golden import FIXTURES, check_adapters_library_loads, hidden, load_golden, needs_adapters_venv

ON_4X = int(transformers.__version__.split(".")[0]) < 5
# transformers 4.x computes BERT-family attention without AttentionInterface: no prefix tuning there
CASES = ["gpt2_prefix", "llama_prefix"] if ON_4X else ["bert_prefix", "gpt2_prefix", "llama_prefix"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", CASES)
def test_prefix_adapter_matches_the_adapters_library(case, attn):
    model, inputs, expected = load_golden(case, attn)
    name = model.load_adapter(FIXTURES / case / expected["setup"]["adapter_dir"], set_active=True)
    assert model.adapters[name].method == "prefix_tuning" and not model.adapters[name].flat
    assert torch.allclose(hidden(model, **inputs), torch.tensor(expected["last_hidden_state"]), atol=1e-4)
    assert torch.allclose(
        hidden(model, input_ids=inputs["input_ids"]),
        torch.tensor(expected["last_hidden_state_no_attention_mask"]),
        atol=1e-4,
    )
    model.set_active_adapters(None)
    assert torch.allclose(
        hidden(model, **inputs), torch.tensor(expected["last_hidden_state_without_adapter"]), atol=1e-4
    )


@pytest.mark.parametrize("case", [c for c in ("bert_prefix", "gpt2_prefix") if c in CASES])
def test_their_ejected_flat_prefix_loads_despite_flat_false_in_its_config(case):
    model, inputs, expected = load_golden(case, "eager")
    flat_dir = FIXTURES / case / expected["setup"]["flat_adapter_dir"]
    assert json.loads((flat_dir / "adapter_config.json").read_text())["config"]["flat"] is False
    name = model.load_adapter(flat_dir, set_active=True)
    assert model.adapters[name].flat
    assert torch.allclose(
        hidden(model, **inputs), torch.tensor(expected["last_hidden_state_flat"]), atol=1e-4
    )


@pytest.mark.parametrize("case", CASES)
def test_written_in_their_layout_and_read_back(case, tmp_path):
    model, inputs, expected = load_golden(case, "eager")
    name = model.load_adapter(FIXTURES / case / expected["setup"]["adapter_dir"], set_active=True)
    model.save_adapter(tmp_path / "theirs", name, layout="adapters")
    theirs = torch.load(tmp_path / "theirs" / "pytorch_adapter.bin", weights_only=True)
    original = torch.load(
        FIXTURES / case / expected["setup"]["adapter_dir"] / "pytorch_adapter.bin", weights_only=True
    )
    assert sorted(theirs) == sorted(original)  # key for key their layout
    written = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert written["config"] == expected["config"]
    model.eject_prefix(name)
    model.save_adapter(tmp_path / "flat", name, layout="adapters")
    fresh, _, _ = load_golden(case, "eager")
    fresh.load_adapter(tmp_path / "flat", set_active=True)
    assert torch.allclose(hidden(fresh, **inputs), torch.tensor(expected["last_hidden_state"]), atol=1e-4)


@pytest.mark.skipif(not ON_4X, reason="transformers 5 routes every architecture through AttentionInterface")
def test_bert_family_on_transformers_4_is_refused_with_the_version_needed():
    model, _, expected = load_golden("bert_prefix", "eager")
    with pytest.raises(adapterhub.ConfigError, match=r"transformers >= 5\.0"):
        model.load_adapter(FIXTURES / "bert_prefix" / expected["setup"]["adapter_dir"])
    assert not model.adapters and model.config._attn_implementation == "eager"


@needs_adapters_venv
@pytest.mark.parametrize("case", CASES)
def test_the_adapters_library_loads_prefixes_we_write(case, tmp_path):
    model, _, expected = load_golden(case, "eager")
    name = model.load_adapter(FIXTURES / case / expected["setup"]["adapter_dir"])
    model.save_adapter(tmp_path / "mlp", name, layout="adapters")
    model.eject_prefix(name)
    model.save_adapter(tmp_path / "flat", name, layout="adapters")
    for form in ("mlp", "flat"):
        check_adapters_library_loads(case, tmp_path / form, "eager", tolerance=1e-4)

"""Adapters saved by the `adapters` library (1.3.0) load into ours and give the same logits (within 1e-4).

The fixtures were written by scripts/compat/make_adapters_fixtures.py in a separate virtual environment with that
library; see docs/compat.md."""

import json
from pathlib import Path

import pytest
import torch
import transformers

import adapterhub
from adapterhub import Stack

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "adapters_lib"
SINGLE = [
    "bert_seq_bn",
    "bert_double_seq_bn",
    "roberta_seq_bn",
    "roberta_double_seq_bn",
    "bert_custom",
    "bert_seq_bn_safetensors",
    "bert_par_bn",
    "gpt2_par_bn",
]


def load_case(case):
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    model = adapterhub.init(transformers.AutoModel.from_pretrained(FIXTURES / case / "base").eval())
    inputs = {
        "input_ids": torch.tensor(expected["input_ids"]),
        "attention_mask": torch.tensor(expected["attention_mask"]),
    }
    return model, inputs, expected


@pytest.mark.parametrize("case", SINGLE)
def test_single_adapter_with_head_matches_the_adapters_library(case):
    model, inputs, expected = load_case(case)
    setup = expected["setup"]
    name = model.load_adapter(FIXTURES / case / setup["adapter_dir"], set_active=True)
    assert name == setup["adapter"] and model.active_head == setup["head"]
    with torch.no_grad():
        logits = model(**inputs).logits
    if case.startswith("gpt2"):
        # their GPT-2 head (no pad_token_id in the config) reads the last position even in padded rows; ours reads
        # the last real token: compare the unpadded rows, where both read the same position
        full = inputs["attention_mask"].all(dim=1)
        logits, expected = (
            logits[full],
            {**expected, "logits": torch.tensor(expected["logits"])[full].tolist()},
        )
        assert full.any()
    assert torch.allclose(logits, torch.tensor(expected["logits"]), atol=1e-4)
    model.set_active_adapters(None)
    model.active_head = name
    with torch.no_grad():
        plain = model(**inputs).logits
    rows = inputs["attention_mask"].all(dim=1) if case.startswith("gpt2") else slice(None)
    assert torch.allclose(plain[rows], torch.tensor(expected["logits_without_adapter"])[rows], atol=1e-4)


def test_stack_matches_the_adapters_library():
    model, inputs, expected = load_case("bert_stack")
    setup = expected["setup"]
    for directory in setup["adapter_dirs"]:
        model.load_adapter(FIXTURES / "bert_stack" / directory)
    model.set_active_adapters(Stack(*setup["adapters"]))
    assert model.active_head == setup["head"]
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, torch.tensor(expected["logits"]), atol=1e-4)
        with model.adapter_setup("task"):
            assert torch.allclose(
                model(**inputs).logits, torch.tensor(expected["logits_task_only"]), atol=1e-4
            )


@pytest.mark.parametrize("case", ["bert_seq_bn", "bert_custom", "roberta_double_seq_bn", "bert_par_bn"])
def test_round_trip_through_our_format_and_back_to_their_layout(case, tmp_path):
    model, inputs, expected = load_case(case)
    name = model.load_adapter(FIXTURES / case / expected["setup"]["adapter_dir"], set_active=True)
    model.save_adapter(tmp_path / "ours", name)
    model.save_adapter(tmp_path / "theirs", name, layout="adapters")
    assert (tmp_path / "theirs" / "model_head.safetensors").exists()
    assert (tmp_path / "theirs" / "pytorch_adapter.bin").exists()  # what that library loads by default
    for layout in ("ours", "theirs"):
        fresh, _, _ = load_case(case)
        fresh.load_adapter(tmp_path / layout, set_active=True)
        with torch.no_grad():
            assert torch.allclose(fresh(**inputs).logits, torch.tensor(expected["logits"]), atol=1e-4)
    written = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert written["config"] == expected["config"]  # their config comes back key for key
    assert written["model_class"].endswith("AdapterModel")


LORA = [f"{arch}_{kind}" for arch in ("bert", "gpt2", "llama") for kind in ("lora_qv", "lora_qkv_ffn")]


def load_hidden_case(case):
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    base = transformers.AutoModel.from_pretrained(FIXTURES / case / "base", attn_implementation="eager")
    model = adapterhub.init(base.eval())
    inputs = {
        "input_ids": torch.tensor(expected["input_ids"]),
        "attention_mask": torch.tensor(expected["attention_mask"]),
    }
    return model, inputs, expected


@pytest.mark.parametrize("case", LORA)
def test_lora_matches_the_adapters_library(case, tmp_path):
    """Their LoRA (q,v; and q,k,v + intermediate + output, GPT-2's fused c_attn included) gives their
    last_hidden_state, and what we write in their layout reads back the same."""
    model, inputs, expected = load_hidden_case(case)
    name = model.load_adapter(FIXTURES / case / "adapter", set_active=True)
    assert model.adapters[name].method == "lora"
    with torch.no_grad():
        ours = model(**inputs).last_hidden_state
    torch.testing.assert_close(ours, torch.tensor(expected["last_hidden_state"]), atol=1e-4, rtol=0)
    model.save_adapter(tmp_path / "theirs", name, layout="adapters", with_head=False)
    written = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    for key in ("r", "alpha", "attn_matrices", "intermediate_lora", "output_lora", "selfattn_lora"):
        assert written["config"][key] == expected["config"][key], key
    fresh, _, _ = load_hidden_case(case)
    fresh.load_adapter(tmp_path / "theirs", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).last_hidden_state, ours, atol=1e-6, rtol=0)

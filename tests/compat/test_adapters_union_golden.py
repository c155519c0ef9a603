"""The `adapters` library's (1.3.0) ``MAMConfig`` and ``UniPELTConfig`` adapters (every weight perturbed, gates
included) load into our ``union`` method with the same last hidden states (within 1e-4), under eager and sdpa
attention; saved again in our format they load back identically."""

import json

import pytest
import torch
import transformers

import adapterhub
from golden import FIXTURES, hidden, load_golden

ON_4X = int(transformers.__version__.split(".")[0]) < 5
pytestmark = pytest.mark.skipif(
    ON_4X, reason="BERT prefix tuning needs transformers >= 5 (AttentionInterface)"
)

PARTS = {
    "bert_mam": ["prefix_tuning", "parallel"],
    "bert_unipelt": ["gated_prefix_tuning", "gated_bottleneck", "gated_lora"],
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(PARTS))
def test_union_matches_the_adapters_library(case, attn, tmp_path):
    model, inputs, expected = load_golden(case, attn)
    name = model.load_adapter(FIXTURES / case / expected["setup"]["adapter_dir"], set_active=True)
    module = model._adapterhub.adapters[name]
    assert [p.method for p in module.parts] == PARTS[case]
    assert sum(p.numel() for p in module.parameters()) == expected["num_parameters"]
    want = torch.tensor(expected["last_hidden_state"])
    assert torch.allclose(hidden(model, **inputs), want, atol=1e-4)
    model.set_active_adapters(None)
    assert torch.allclose(
        hidden(model, **inputs), torch.tensor(expected["last_hidden_state_without_adapter"]), atol=1e-4
    )
    # our format round trip
    model.save_adapter(tmp_path / "ours", name)
    other, _, _ = load_golden(case, attn)
    other.load_adapter(tmp_path / "ours", set_active=True)
    assert torch.allclose(hidden(other, **inputs), want, atol=1e-4)


def test_mam_preset_is_their_mam_config():
    theirs = json.loads((FIXTURES / "bert_mam" / "adapter" / "adapter_config.json").read_text())["config"]
    ours = adapterhub.resolve_config("mam")
    prefix, parallel = ours.configs
    assert prefix.prefix_length == theirs["configs"][0]["prefix_length"] == 30
    assert prefix.bottleneck_size == theirs["configs"][0]["bottleneck_size"] == 800
    assert parallel.reduction_factor == theirs["configs"][1]["reduction_factor"] == 2
    assert parallel.scaling == theirs["configs"][1]["scaling"] == 4.0
    assert parallel.after_ffn and not parallel.after_attention


def test_unipelt_preset_is_their_unipelt_config():
    theirs = json.loads((FIXTURES / "bert_unipelt" / "adapter" / "adapter_config.json").read_text())["config"]
    prefix, bottleneck, lora = adapterhub.resolve_config("unipelt").configs
    assert all(c["use_gating"] for c in theirs["configs"])
    assert prefix.prefix_length == theirs["configs"][0]["prefix_length"] == 10
    assert prefix.bottleneck_size == theirs["configs"][0]["bottleneck_size"]
    assert bottleneck.reduction_factor == theirs["configs"][1]["reduction_factor"] == 16
    assert bottleneck.original_ln_before and bottleneck.after_ffn and not bottleneck.after_attention
    assert (lora.r, lora.alpha, lora.targets) == (8, 2.0, ("q", "v"))

"""Merging LoRA into a 4-bit base: refused without dequantize=True (naming the flag); with it the targeted layers
become float nn.Linear holding dequant(W) + delta and the outputs equal the unmerged ones."""

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from quant_models import load_quantized, save_tiny_llama, token_batch


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.mark.parametrize("config", ["lora[r=4,targets=[q,v,ffn_out]]", "lora[r=4,target_modules=all-linear]"])
def test_merge_needs_dequantize_and_then_keeps_outputs(saved, config):
    # train mode: eval + no_grad would switch bitsandbytes to its repacked CPU kernel (bf16 arithmetic, ~1e-3 off)
    model = adapterhub.init(load_quantized(saved, "nf4", True, torch.float32)).train()
    model.add_adapter("a", config, set_active=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
    batch = token_batch()
    with torch.no_grad():
        unmerged = model(**batch).logits
    with pytest.raises(ConfigError, match="dequantize=True"):
        model.merge_adapter("a")
    assert model.merged_adapters == []
    model.merge_adapter("a", dequantize=True)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj) is torch.nn.Linear and q_proj.weight.dtype == torch.float32
    assert not q_proj.weight.requires_grad
    assert type(model.model.layers[0].self_attn.k_proj).__name__ == (
        "Linear" if "all-linear" in config else "Linear4bit"  # only the targeted layers are dequantised
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, unmerged, atol=1e-5, rtol=1e-5)
    model.unmerge_adapter("a")  # the adapter runs again, now on the float layers
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, unmerged, atol=1e-5, rtol=1e-5)


def test_dequantized_weight_survives_cpu_repacking(saved):
    from adapterhub.runtime.quantized import dequantized_weight, quantization_of

    layer = load_quantized(saved, "fp4", False, torch.float32).model.layers[0].mlp.down_proj
    assert quantization_of(layer) == "fp4"
    before = dequantized_weight(layer)  # (d_out, d_in)
    assert before.shape == (64, 128)
    layer.eval()
    with (
        torch.no_grad()
    ):  # bitsandbytes repacks the codes for its CPU kernel here (when the CPU has avx512bf16)
        expected = torch.nn.functional.linear(torch.ones(1, 128), before)
        assert (layer(torch.ones(1, 128)) - expected).abs().max() < 5e-2
    after = dequantized_weight(layer)  # read through the repacked kernel: what the layer now computes
    with torch.no_grad():
        x = torch.randn(3, 128, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(
            torch.nn.functional.linear(x, after), layer(x), atol=5e-3, rtol=0
        )  # bf16 kernel
    torch.testing.assert_close(after, before, atol=5e-2, rtol=0)

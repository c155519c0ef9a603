"""LoRA on a bitsandbytes 4-bit base (QLoRA) against peft's on the same base: same outputs and the same
gradients for the same weights; the base stays frozen and quantised; the adapter file holds no base weights."""

import pytest
import torch
from safetensors.torch import load_file

import adapterhub
from quant_models import VARIANTS, load_quantized, save_tiny_llama, token_batch

peft = pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[dev]')")

PEFT_TARGETS = ["q_proj", "v_proj", "down_proj"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _perturb(model, tag):
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if tag in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def _ours_name(peft_name):
    """peft's ``...layers.0.self_attn.q_proj.lora_A.default.weight`` -> ``(0, 'q', 'A')``."""
    parts = peft_name.split(".")
    layer = int(parts[parts.index("layers") + 1])
    point = {"q_proj": "q", "v_proj": "v", "down_proj": "ffn_out"}[
        parts[parts.index("lora_A" if "lora_A" in parts else "lora_B") - 1]
    ]
    return layer, point, "A" if "lora_A" in parts else "B"


@pytest.mark.parametrize(("quant_type", "double", "dtype"), VARIANTS)
def test_qlora_matches_peft_outputs_and_gradients(tmp_path, saved, quant_type, double, dtype):
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_TARGETS, lora_dropout=0.0)
    theirs = peft.get_peft_model(load_quantized(saved, quant_type, double, dtype), config)
    _perturb(theirs, "lora_")
    theirs.save_pretrained(tmp_path / "peft")
    ours = adapterhub.init(load_quantized(saved, quant_type, double, dtype))
    name = ours.load_adapter(tmp_path / "peft", set_active=True)
    ours.train_adapter(name)
    theirs.train()
    batch = token_batch()
    mine, ref = ours(**batch), theirs(**batch)
    torch.testing.assert_close(mine.logits, ref.logits, atol=1e-5, rtol=1e-5)
    mine.loss.backward()
    ref.loss.backward()
    adapter = ours._adapterhub.adapters[name]
    compared = 0
    for peft_name, param in theirs.named_parameters():
        if "lora_" not in peft_name:
            assert param.grad is None
            continue
        layer, point, which = _ours_name(peft_name)
        own = getattr(adapter.layer_at(layer, point), f"lora_{which}")
        torch.testing.assert_close(own.grad, param.grad, atol=1e-5, rtol=1e-4)
        compared += 1
    assert compared == 2 * 3 * 2  # layers x targets x (A, B)
    # the base stays frozen and quantised
    q_proj = ours.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == "Linear4bit" and q_proj.weight.dtype == torch.uint8
    base = [p for n, p in ours.named_parameters() if not n.startswith("_adapterhub.")]
    assert all(not p.requires_grad and p.grad is None for p in base)


def test_add_train_save_load_on_4bit_base(tmp_path, saved):
    model = adapterhub.init(load_quantized(saved, "nf4", True, torch.bfloat16))
    codes = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("_adapterhub.")}
    model.add_adapter("a", "lora[r=4,targets=[q,k,v,ffn_in,ffn_out]]", set_active=True)
    model.train_adapter("a")
    adapter_params = [p for p in model.parameters() if p.requires_grad]
    assert adapter_params and all(p.dtype == torch.float32 for p in adapter_params)
    optimizer = torch.optim.AdamW(adapter_params, lr=1e-2)
    batch = token_batch()
    losses = []
    for _ in range(4):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if not n.startswith("_adapterhub."):
            assert torch.equal(p, codes[n]), n  # the quantised base did not move
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_adapter(tmp_path / "a", "a")
    saved_keys = set(load_file(tmp_path / "a" / "adapter.safetensors"))
    assert saved_keys and all(".lora_" in k for k in saved_keys)
    fresh = adapterhub.init(load_quantized(saved, "nf4", True, torch.bfloat16)).eval()
    fresh.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, expected, atol=1e-6, rtol=0)

"""DoRA and (IA)³ on a 4-bit base (they read the base weight at forward time: dequantised), and LoRA / DoRA on an
8-bit base, against peft on the same quantised base: same outputs and gradients; methods that need no base weight
still work; what cannot apply to a quantised layer says so."""

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from quant_models import load_quantized, save_tiny_llama, token_batch

peft = pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _perturb(model, tags):
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(tag in name for tag in tags):
                noise = torch.randn(param.shape, generator=generator)
                if "magnitude" in name or "ia3_l" in name:
                    param.mul_(1 + 0.2 * noise)
                else:
                    param.copy_(noise * 0.3)


def _grads(model, tags):
    return sorted(
        (p.grad.flatten() for n, p in model.named_parameters() if any(t in n for t in tags)),
        key=lambda g: (g.numel(), g.abs().sum().item()),
    )


CASES = {
    # id: (quant type, compute dtype, peft config, peft tags, our tags)
    "dora-nf4": ("nf4", torch.float32, "dora", ("lora_",), ("lora_", "magnitude")),
    "dora-fp4-bf16": ("fp4", torch.bfloat16, "dora", ("lora_",), ("lora_", "magnitude")),
    "ia3-nf4": ("nf4", torch.float32, "ia3", ("ia3_l",), ("_adapterhub",)),
    "ia3-fp4-bf16": ("fp4", torch.bfloat16, "ia3", ("ia3_l",), ("_adapterhub",)),
    "lora-int8": ("int8", torch.float32, "lora", ("lora_",), ("lora_",)),
    "dora-int8": ("int8", torch.float32, "dora", ("lora_",), ("lora_", "magnitude")),
    "ia3-int8": ("int8", torch.float32, "ia3", ("ia3_l",), ("_adapterhub",)),
}


def _peft_config(method):
    if method == "ia3":
        return peft.IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]
        )
    return peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=method == "dora"
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_method_on_quantized_base_matches_peft(tmp_path, saved, case):
    quant, dtype, method, peft_tags, our_tags = CASES[case]
    theirs = peft.get_peft_model(load_quantized(saved, quant, True, dtype), _peft_config(method))
    _perturb(theirs, ("lora_", "ia3_l"))
    theirs.save_pretrained(tmp_path / "peft")
    ours = adapterhub.init(load_quantized(saved, quant, True, dtype))
    name = ours.load_adapter(tmp_path / "peft", set_active=True)
    assert ours.adapters[name].method == method
    ours.train_adapter(name)
    theirs.train()  # (eval + no_grad would switch bitsandbytes to its repacked CPU kernel; peft then misreads W)
    batch = token_batch()
    mine, ref = ours(**batch), theirs(**batch)
    # int8: bitsandbytes rounds inputs to float16 in its matmul; (IA)³ on down_proj's input with bfloat16 compute:
    # peft runs the layer (bf16 arithmetic), we recompute W (s ⊙ x) from the dequantised W in float32
    tol = 1e-2 if quant == "int8" or (method == "ia3" and dtype == torch.bfloat16) else 1e-4
    torch.testing.assert_close(mine.logits, ref.logits, atol=tol, rtol=tol)
    mine.loss.backward()
    ref.loss.backward()
    ours_grads, peft_grads = _grads(ours, our_tags), _grads(theirs, peft_tags)
    assert len(ours_grads) == len(peft_grads) > 0
    for a, b in zip(ours_grads, peft_grads, strict=True):
        torch.testing.assert_close(a, b, atol=10 * tol, rtol=10 * tol)
    quantized = ours.model.layers[0].self_attn.v_proj
    assert type(quantized).__name__ == ("Linear8bitLt" if quant == "int8" else "Linear4bit")


@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_residual_and_prefix_methods_run_on_a_quantized_base(saved, quant):
    model = adapterhub.init(load_quantized(saved, quant, False, torch.float32))
    for name, config in [("b", "seq_bn"), ("p", "prefix_tuning[prefix_length=4]")]:
        model.add_adapter(name, config, set_active=True)
        model.train_adapter(name)
        loss = model(**token_batch()).loss
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None for n, p in model.named_parameters() if f"adapters.{name}." in n)


def test_modules_to_save_of_a_quantized_layer_is_refused(saved):
    model = adapterhub.init(load_quantized(saved, "nf4", False, torch.float32))
    with pytest.raises(ConfigError, match=r"modules_to_save.*quantised"):
        model.add_adapter("m", "lora[target_modules=[q_proj],modules_to_save=[down_proj]]")


def test_new_dora_on_a_4bit_base_starts_as_the_identity(saved):
    from adapterhub.runtime.quantized import dequantized_weight

    model = adapterhub.init(load_quantized(saved, "nf4", True, torch.float32)).train()
    batch = token_batch()
    with torch.no_grad():
        base = model(**batch).logits
    model.add_adapter("d", "lora[use_dora=true,r=4,targets=[q,v]]", set_active=True)
    magnitude = next(p for n, p in model.named_parameters() if "adapters.d." in n and "magnitude" in n)
    norms = dequantized_weight(model.model.layers[0].self_attn.q_proj).norm(dim=1)  # ‖W‖ per output row
    torch.testing.assert_close(magnitude, norms, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base, atol=1e-5, rtol=1e-5)

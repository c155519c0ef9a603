"""adapterhub.prepare_kbit_training against peft's prepare_model_for_kbit_training on a 4-bit base."""

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from quant_models import load_quantized, save_tiny_llama, token_batch
from tiny_models import build

peft = pytest.importorskip("peft", reason="peft is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _state(model):
    return {n: (p.dtype, p.requires_grad) for n, p in model.named_parameters() if "_adapterhub" not in n}


def test_prepare_matches_peft(saved):
    ours = load_quantized(saved, "nf4", False, torch.bfloat16, dtype=torch.bfloat16)
    theirs = load_quantized(saved, "nf4", False, torch.bfloat16, dtype=torch.bfloat16)
    assert ours.model.norm.weight.dtype == torch.bfloat16  # something to cast
    assert adapterhub.prepare_kbit_training(ours) is ours
    peft.prepare_model_for_kbit_training(theirs)
    assert _state(ours) == _state(theirs)
    assert ours.model.norm.weight.dtype == torch.float32 and ours.lm_head.weight.dtype == torch.float32
    assert ours.model.layers[0].self_attn.q_proj.weight.dtype == torch.uint8
    assert ours.is_activation_checkpointing and theirs.is_activation_checkpointing
    embedded = ours.get_input_embeddings()(token_batch()["input_ids"])
    assert embedded.requires_grad  # input gradients enabled (reentrant checkpointing needs them)


def test_checkpointed_qlora_gives_the_same_gradients(saved):
    grads = []
    for checkpointing in (False, True):
        model = load_quantized(saved, "nf4", True, torch.float32)
        adapterhub.prepare_kbit_training(model, gradient_checkpointing=checkpointing)
        adapterhub.init(model)
        torch.manual_seed(0)
        model.add_adapter("a", "lora[r=4]", set_active=True)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
        model.train_adapter("a")
        model(**token_batch()).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        assert model.is_activation_checkpointing is checkpointing
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 2 * 2 * 2
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)


def test_prepare_refuses_a_float_model_unless_asked():
    model = build("llama")
    with pytest.raises(ConfigError, match="require_quantized=False"):
        adapterhub.prepare_kbit_training(model)
    model.half()
    adapterhub.prepare_kbit_training(model, gradient_checkpointing=False, require_quantized=False)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())

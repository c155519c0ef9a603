"""bitsandbytes' CPU inference layout: a no-grad eval forward converts a 4-bit weight for its AVX512-BF16 kernel,
which runs outside autograd and so cuts the gradient to earlier layers. ``adapterhub.init`` switches the conversion
off, so LoRA gradients after an evaluation equal those without one (and peft's on a fresh model); a model converted
before ``init`` is refused by ``train_adapter`` with the remedy."""

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.runtime.quantized import cpu_inference_layout_paths
from quant_models import load_quantized, save_tiny_llama, token_batch

SETUP = "lora[r=4,targets=[q,k,v,attn_out,ffn_in,ffn_out]]"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


def _lora_grads(model, evaluate_first: bool) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model.add_adapter("a", SETUP, set_active=True)
    with torch.no_grad():  # non-zero B, so gradients reach every A
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    batch = token_batch()
    if evaluate_first:
        model.eval()
        with torch.no_grad():
            model(**batch)
    model.train_adapter("a")
    model(**batch).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_an_evaluation_before_training_leaves_lora_gradients_unchanged(saved):
    plain = _lora_grads(adapterhub.init(load_quantized(saved, "nf4")), evaluate_first=False)
    after_eval_model = adapterhub.init(load_quantized(saved, "nf4"))
    after_eval = _lora_grads(after_eval_model, evaluate_first=True)
    assert cpu_inference_layout_paths(after_eval_model) == []
    assert plain.keys() == after_eval.keys() and len(plain) == 2 * 6 * 2
    for name, grad in plain.items():
        torch.testing.assert_close(after_eval[name], grad, atol=1e-6, rtol=1e-5, msg=name)
    first_layer_a = [n for n in plain if ".layers.0." in n and "lora_A" in n]
    assert first_layer_a and all(plain[n].abs().sum() > 0 for n in first_layer_a)


def test_a_model_converted_before_init_is_refused_for_training(saved):
    model = load_quantized(saved, "nf4").eval()
    with torch.no_grad():
        model(**token_batch())
    if not cpu_inference_layout_paths(model):
        pytest.skip(
            "this CPU has no AVX512-BF16: bitsandbytes never converts to its CPU inference layout here"
        )
    model = adapterhub.init(model)
    model.add_adapter("a", SETUP, set_active=True)
    with pytest.raises(
        ConfigError, match=r"CPU inference layout.*reload the model and call adapterhub\.init"
    ):
        model.train_adapter("a")

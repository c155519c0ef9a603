"""The bottleneck placement formulas (Houlsby, Pfeiffer, Bapna & Firat; post- and pre-norm sites), checked against a
reference computed by hand from the weights."""

import pytest
import torch

import adapterhub
from tiny_models import build, perturb


def adapter_fn(layer):
    """A(x) = W_up f(W_down x + b_down) + b_up, with the layer's own activation, optional norms and scaling."""

    def apply(x):
        if layer.norm_before is not None:
            x = layer.norm_before(x)
        return layer.up(layer.activation(layer.down(x))) * layer.scaling

    return apply


@pytest.mark.parametrize("preset", ["houlsby", "pfeiffer", "bapna_firat"])
def test_bert_ffn_site_matches_the_formula(preset):
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config=preset, set_active=True)
    perturb(model._adapterhub.adapters["a"])
    layer = model.encoder.layer[0]
    bert_output = layer.output  # h = dropout(dense(x)); out = LN(h + input)
    intermediate = torch.randn(2, 5, 37)
    residual = torch.randn(2, 5, 32)
    with torch.no_grad():
        h = bert_output.dropout(bert_output.dense(intermediate))
        ln = bert_output.LayerNorm.forward
        A = adapter_fn(model._adapterhub.adapters["a"].layer_at(0, "ffn"))
        if preset == "houlsby":
            expected = ln(h + A(h) + residual)
        elif preset == "pfeiffer":
            x = ln(h + residual)
            expected = ln(h + A(x) + residual)
        else:  # Bapna & Firat: z = LN(h + input); out = z + A(LN_new(z))
            z = ln(h + residual)
            expected = z + A(z)
        got = bert_output(intermediate, residual)
    assert torch.allclose(got, expected, atol=1e-6)


def test_houlsby_also_adapts_the_attention_site():
    model = adapterhub.init(build("bert"))
    model.add_adapter("a", config="houlsby", set_active=True)
    perturb(model._adapterhub.adapters["a"])
    self_output = model.encoder.layer[1].attention.output
    x, residual = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        h = self_output.dropout(self_output.dense(x))
        A = adapter_fn(model._adapterhub.adapters["a"].layer_at(1, "attn"))
        expected = self_output.LayerNorm.forward(h + A(h) + residual)
        assert torch.allclose(self_output(x, residual), expected, atol=1e-6)


def test_pre_norm_models_add_the_adapter_before_the_residual():
    model = adapterhub.init(build("llama"))
    model.add_adapter("a", config="houlsby", set_active=True)
    perturb(model._adapterhub.adapters["a"])
    layer = model.layers[0]
    x = torch.randn(1, 4, 32)
    with torch.no_grad():
        normed = layer.post_attention_layernorm.forward(x)
        # calling the RMSNorm through __call__ records the residual; the MLP output is then adapted
        layer.post_attention_layernorm(x)
        got = layer.mlp(normed)
        h = layer.mlp.forward(normed)
        A = adapter_fn(model._adapterhub.adapters["a"].layer_at(0, "ffn"))
        assert torch.allclose(got, h + A(h), atol=1e-6)


def test_scaling_and_adapter_layer_norm_options():
    model = adapterhub.init(build("bert"))
    model.add_adapter(
        "a",
        config="houlsby[scaling=0.5,ln_after=true,adapter_residual_before_ln=true,residual_before_ln=post_add,original_ln_before=true]",
        set_active=True,
    )
    perturb(model._adapterhub.adapters["a"])
    out_mod = model.encoder.layer[0].output
    x, residual = torch.randn(2, 3, 37), torch.randn(2, 3, 32)
    layer = model._adapterhub.adapters["a"].layer_at(0, "ffn")
    with torch.no_grad():
        h = out_mod.dropout(out_mod.dense(x))
        ln = out_mod.LayerNorm.forward
        summed = h + residual
        y = layer.norm_after(0.5 * layer.up(layer.activation(layer.down(ln(summed)))) + summed)
        assert torch.allclose(out_mod(x, residual), ln(y + residual), atol=1e-6)

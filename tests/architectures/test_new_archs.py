"""What the method x architecture matrix in tests/methods and tests/core cannot say generically about DeBERTa-v2,
ModernBERT, Gemma 1/2/3, Phi-3 and GPT-NeoX: the points each family refuses (with the reason), GPT-NeoX's
parallel residual and its projections, prefix tuning under sliding windows, composition on every new family, and
LoRA files of peft on Gemma and Phi-3 (fused qkv_proj / gate_up_proj).

The new families are in ``tiny_models.ENCODERS`` / ``DECODERS``, so every parametrised behaviour test of the
methods, heads and core suites runs on them too."""

from __future__ import annotations

import pytest
import torch
import transformers

import adapterhub
from adapterhub import BatchSplit, Fuse, Stack
from adapterhub.errors import ConfigError
from method_checks import (
    ACTIVE,
    check_merge,
    check_round_trip,
    check_row_blocks,
    check_training_step,
    hidden,
    make,
    make_inputs,
)
from tiny_models import NEW_DECODERS, NEW_ENCODERS, build, perturb

NEW = NEW_ENCODERS + NEW_DECODERS
ON_4X = int(transformers.__version__.split(".")[0]) < 5
NEOX_LINEARS = {
    "lora": "lora[r=4,alpha=8,targets=[attn_out,ffn_in,ffn_out]]",
    "dora": "dora[r=4,alpha=8,targets=[attn_out,ffn_in,ffn_out]]",
    "ia3": "ia3[targets=[attn_out,ffn_in],input_targets=[ffn_out]]",
}


@pytest.fixture
def inputs():
    return make_inputs()


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("arch", "config", "why"),
    [
        ("deberta-v2", "prefix_tuning[prefix_length=3]", "DisentangledSelfAttention computes"),
        (
            "deberta-v2",
            "prompt_tuning[prompt_length=3]",
            "multiplies its output by the attention mask|>= 5.0",
        ),
        ("deberta-v2", "mam", "DisentangledSelfAttention computes"),  # a union with a prefix part
        ("gpt_neox", "lora", "interleaves query, key and value per head"),
        ("gpt_neox", "ia3", "interleaves query, key and value per head"),
    ],
)
def test_points_a_family_cannot_carry_are_refused_with_the_reason(arch, config, why):
    model = adapterhub.init(build(arch))
    with pytest.raises(ConfigError, match=why):
        model.add_adapter("x", config=config)
    assert "x" not in model._adapterhub.adapters


def test_phi3_with_grouped_query_attention_refuses_only_the_unequal_qkv_slices(inputs):
    model = adapterhub.init(build("phi3", num_key_value_heads=2))  # qkv_proj rows: 32 q, 16 k, 16 v
    with pytest.raises(ConfigError, match="fuses parts of different widths"):
        model.add_adapter("qv", config="lora")
    model.add_adapter("ok", config="lora[targets=[attn_out,ffn_gate,ffn_in,ffn_out]]", set_active=True)
    perturb(model._adapterhub.adapters["ok"])
    assert not torch.allclose(
        hidden(model, inputs, ACTIVE), build("phi3", num_key_value_heads=2)(**inputs)[0]
    )


# ------------------------------------------------------------------------------------------------ GPT-NeoX


@pytest.mark.parametrize("method", sorted(NEOX_LINEARS))
def test_gpt_neox_linear_methods_on_its_projections(method, inputs, tmp_path):
    config = NEOX_LINEARS[method]
    model = make("gpt_neox", config)
    reference = build("gpt_neox")(**inputs).last_hidden_state
    assert torch.equal(hidden(model, inputs), reference)
    assert not torch.allclose(hidden(model, inputs, "a"), reference, atol=1e-4)
    check_row_blocks(model, inputs)
    check_merge(model, inputs)
    check_round_trip("gpt_neox", make("gpt_neox", config, names=("a",)), inputs, tmp_path, method)
    check_training_step(make("gpt_neox", config), inputs)


def _ffn_inputs(model, inputs, setup):
    """The input of each layer's MLP (B, T, d) under ``setup``."""
    seen = []
    layers = adapterhub.runtime.layers.get_layers(model, model._spec)
    handles = [
        layer.mlp.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone())) for layer in layers
    ]
    try:
        hidden(model, inputs, setup)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("parallel", [True, False])
def test_gpt_neox_attn_adapter_reaches_the_ffn_only_without_parallel_residual(parallel, inputs):
    """Parallel residual: both sites read the layer input x; the layer sums x + h_attn' + h_ffn', so an adapter at
    the attention site does not change what layer 0's FFN reads. Sequential: it does."""
    model = adapterhub.init(build("gpt_neox", num_hidden_layers=1, use_parallel_residual=parallel))
    model.add_adapter("attn", config="houlsby[after_ffn=false]")
    perturb(model._adapterhub.adapters["attn"])
    base, adapted = _ffn_inputs(model, inputs, None), _ffn_inputs(model, inputs, "attn")
    assert torch.equal(base[0], adapted[0]) is parallel
    assert not torch.allclose(hidden(model, inputs, "attn"), hidden(model, inputs), atol=1e-3)


def test_gpt_neox_parallel_adapter_reads_the_layer_input(inputs):
    """Parallel adapter at ffn: the layer output gains exactly s·A(x) with x the layer input."""
    model = adapterhub.init(build("gpt_neox", num_hidden_layers=1))
    model.add_adapter("p", config="parallel")
    perturb(model._adapterhub.adapters["p"])
    layer = adapterhub.runtime.layers.get_layers(model, model._spec)[0]
    captured = {}
    handle = layer.register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    out_hook = layer.register_forward_hook(  # transformers 4.x layers return a tuple
        lambda m, a, out: captured.setdefault("y", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad(), model.adapter_setup("p"):
            model(**inputs)
        x, with_adapter = captured.pop("x"), captured.pop("y")
        with torch.no_grad():
            model(**inputs)
        without = captured.pop("y")
    finally:
        handle.remove()
        out_hook.remove()
    adapter_layer = model._adapterhub.adapters["p"].layer_at(0, "ffn")
    assert adapter_layer.norm_after is None  # the preset has no LayerNorm after the adapter
    with torch.no_grad():
        delta = adapter_layer.delta(x)  # s·A(x), (B, T, d)
    assert delta.abs().max() > 1e-3
    torch.testing.assert_close(with_adapter, without + delta, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ sliding windows


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "modernbert"])
def test_prefix_tuning_keeps_the_sliding_window(arch, inputs):
    """One sliding-window layer (window 3): with a prefix active, the last position still does not see a token
    outside its window, and the prefix does change the outputs."""
    window = {"sliding_window": 3} if arch != "modernbert" else {"local_attention": 6}  # ModernBERT: ±3
    overrides = dict(num_hidden_layers=1, layer_types=["sliding_attention"], **window)
    model = adapterhub.init(build(arch, **overrides))
    if arch == "modernbert" and ON_4X:  # ModernBERT 4.x computes attention without AttentionInterface
        with pytest.raises(ConfigError, match="AttentionInterface"):
            model.add_adapter("p", config="prefix_tuning[prefix_length=4]")
        return
    model.add_adapter("p", config="prefix_tuning[prefix_length=4]", set_active=True)
    perturb(model._adapterhub.adapters["p"], std=0.5)
    ids = inputs["input_ids"][:1]
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 7) % 90 + 3
    with torch.no_grad():
        out = model(input_ids=ids).last_hidden_state
        out_changed = model(input_ids=changed).last_hidden_state
        with model.adapter_setup(None):
            plain = model(input_ids=ids).last_hidden_state
    assert not torch.allclose(out, plain, atol=1e-4)  # the prefix is seen
    torch.testing.assert_close(out_changed[0, -1], out[0, -1], atol=1e-6, rtol=0)  # window still applies
    assert not torch.allclose(out_changed[0, 0], out[0, 0], atol=1e-4)


# ------------------------------------------------------------------------------------------------ composition


@pytest.mark.parametrize("arch", NEW)
def test_stack_fuse_and_batchsplit_of_bottleneck_adapters(arch, inputs):
    model = adapterhub.init(build(arch))
    for i, name in enumerate("ab"):
        model.add_adapter(name, config="pfeiffer")
        perturb(model._adapterhub.adapters[name], seed=20 + i, std=0.1)
    single = {n: hidden(model, inputs, n) for n in "ab"}
    stacked = hidden(model, inputs, Stack("a", "b"))
    assert not torch.allclose(stacked, single["a"], atol=1e-4)
    out = hidden(model, inputs, BatchSplit("a", "b", batch_sizes=[1, 2]))
    rows = [
        hidden(model, {k: v[:1] for k, v in inputs.items()}, "a"),
        hidden(model, {k: v[1:] for k, v in inputs.items()}, "b"),
    ]
    torch.testing.assert_close(out, torch.cat(rows), atol=1e-5, rtol=0)
    model.add_adapter_fusion(Fuse("a", "b"))
    fused = hidden(model, inputs, Fuse("a", "b"))
    assert fused.shape == single["a"].shape and torch.isfinite(fused).all()


# ------------------------------------------------------------------------------------------------ peft


PEFT_CASES = {
    # arch: (peft target_modules, our targets)
    "gemma": (["q_proj", "v_proj", "gate_proj", "down_proj"], ["q", "v", "ffn_gate", "ffn_out"]),
    "gemma2": (["q_proj", "k_proj", "o_proj", "up_proj"], ["q", "k", "attn_out", "ffn_in"]),
    "phi3": (["qkv_proj", "gate_up_proj", "o_proj"], ["q", "k", "v", "ffn_gate", "ffn_in", "attn_out"]),
}


@pytest.mark.parametrize("arch", sorted(PEFT_CASES))
def test_peft_lora_files_give_equal_logits(arch, tmp_path):
    peft = pytest.importorskip("peft", reason="peft is not installed")
    modules, targets = PEFT_CASES[arch]
    theirs = peft.get_peft_model(
        build(arch, "causal_lm"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=modules)
    ).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:  # B starts at zero: perturb A and B
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(tmp_path / "a")
    ours = adapterhub.init(build(arch, "causal_lm"))
    name = ours.load_adapter(tmp_path / "a", set_active=True)
    assert sorted(ours._adapterhub.adapters[name].config.targets) == sorted(targets)
    inputs = make_inputs()
    with torch.no_grad():
        expected, got = theirs(**inputs).logits, ours(**inputs).logits
        plain = build(arch, "causal_lm")(**inputs).logits
    assert (expected - plain).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    ours.save_adapter(tmp_path / "b", name, layout="peft")  # and back into peft
    again = peft.PeftModel.from_pretrained(build(arch, "causal_lm"), tmp_path / "b").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gemma", "phi3"])
def test_lora_equals_peft_lora_with_the_same_weights(arch):
    """Our LoRA and peft's, same base weights and the same A / B, give the same logits (tests/methods/test_lora_peft
    on the fused and unfused decoders)."""
    peft = pytest.importorskip("peft", reason="peft is not installed")
    modules = ["qkv_proj"] if arch == "phi3" else ["q_proj", "k_proj", "v_proj"]
    theirs = peft.get_peft_model(
        build(arch, "causal_lm"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=modules)
    ).eval()
    ours = adapterhub.init(build(arch, "causal_lm"))
    ours.add_adapter("x", config="lora[r=4,alpha=8,targets=[q,k,v]]", set_active=True)
    mine = ours._adapterhub.adapters["x"]
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for index, layer in enumerate(theirs.base_model.model.model.layers):
            attn = layer.self_attn
            sites = (
                {"q": attn.qkv_proj}
                if arch == "phi3"
                else {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj}
            )
            for point, site in sites.items():
                a, b = site.lora_A["default"].weight, site.lora_B["default"].weight
                a.copy_(torch.randn(a.shape, generator=generator) * 0.3)
                b.copy_(torch.randn(b.shape, generator=generator) * 0.3)
                if arch == "phi3":  # one LoRA on the fused module = one per slice sharing A
                    for part, rows in zip("qkv", b.chunk(3, dim=0), strict=True):
                        mine.layer_at(index, part).lora_A.copy_(a)
                        mine.layer_at(index, part).lora_B.copy_(rows)
                else:
                    mine.layer_at(index, point).lora_A.copy_(a)
                    mine.layer_at(index, point).lora_B.copy_(b)
        inputs = make_inputs()
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-5, rtol=0)

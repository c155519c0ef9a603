"""MAD-X invertible adapters (bottleneck_inv) on every supported architecture: identity when inactive, the
coupling block's inverse, training touches only the adapter, round trips, composition, LM heads, deinit."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapterhub.api.model import deinit
from adapterhub.errors import ConfigError
from adapterhub.methods.invertible import InvertibleBottleneckConfig, NICECoupling
from method_checks import ACTIVE, count_adapter_hooks, hidden, perturb
from tiny_models import ARCHITECTURES, DECODERS, build, make_inputs


def make(arch: str, kind: str = "base", names=("a", "b"), config: str = "seq_bn_inv"):
    model = adapterhub.init(build(arch, kind))
    for i, name in enumerate(names):
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], seed=10 + i, std=0.1)
    return model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_inactive_is_bit_identical_active_changes_and_deinit_removes_hooks(arch):
    inputs = make_inputs()
    plain = build(arch)
    with torch.no_grad():
        base = plain(**inputs).last_hidden_state
    model = make(arch, names=("a",))
    assert torch.equal(hidden(model, inputs), base)
    assert not torch.allclose(hidden(model, inputs, "a"), base, atol=1e-3)
    # only the invertible part active changes the outputs too (the bottleneck part zeroed)
    with torch.no_grad():
        for p in model._adapterhub.adapters["a"].layers.parameters():
            p.zero_()
    assert not torch.allclose(hidden(model, inputs, "a"), base, atol=1e-3)
    model.set_active_adapters("a")
    deinit(model)
    assert count_adapter_hooks(model) == 0
    with torch.no_grad():
        assert torch.equal(model(**inputs).last_hidden_state, base)


def test_inverse_of_forward_is_the_identity():
    torch.manual_seed(0)
    for dim in (32, 33):
        block = NICECoupling(dim, 2, "relu")
        perturb(block, seed=3, std=0.5)
        x = torch.randn(2, 5, dim)
        y = block(x)
        assert not torch.allclose(y, x, atol=1e-3)
        torch.testing.assert_close(block(y, rev=True), x, atol=1e-5, rtol=0)
        torch.testing.assert_close(block(block(x, rev=True)), x, atol=1e-5, rtol=0)


def test_presets_and_parameters():
    for preset, alias, activation in (
        ("pfeiffer+inv", "seq_bn_inv", "relu"),
        ("houlsby+inv", "double_seq_bn_inv", "swish"),
    ):
        config = adapterhub.spec.configs.resolve_config(preset)
        assert config == adapterhub.spec.configs.resolve_config(alias)
        assert isinstance(config, InvertibleBottleneckConfig) and config.method == "bottleneck_inv"
        assert config.inv_adapter == "nice" and config.inv_adapter_reduction_factor == 2
        assert config.non_linearity == activation
    assert adapterhub.spec.configs.resolve_config("pfeiffer+inv").after_ffn
    assert adapterhub.spec.configs.resolve_config("houlsby+inv").after_attention
    block = NICECoupling(32, 2, "relu")  # F: 16 -> 8 -> 16, G: 16 -> 8 -> 16
    assert sum(p.numel() for p in block.parameters()) == 2 * (16 * 8 + 8 + 8 * 16 + 16)
    with pytest.raises(ConfigError, match="glow"):
        adapterhub.spec.configs.resolve_config("seq_bn_inv[inv_adapter=glow]")
    with pytest.raises(ConfigError, match="inv_adapter_reduction_factor"):
        adapterhub.spec.configs.resolve_config("seq_bn_inv[inv_adapter_reduction_factor=0]")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_training_step_changes_only_the_adapter_and_head(arch):
    inputs = make_inputs()
    model = make(arch, names=("a", "b"))
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**inputs, labels=torch.tensor([0, 1, 1])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert all(n.startswith(("_adapterhub.adapters.a.", "_adapterhub.heads.a.")) for n in changed), changed
    assert any(".inv.F." in n for n in changed) and any(".inv.G." in n for n in changed)
    assert any(".layers." in n for n in changed)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_save_load_round_trip(arch, tmp_path):
    inputs = make_inputs()
    model = make(arch, names=("a",))
    expected = hidden(model, inputs, "a")
    model.save_adapter(tmp_path / "a", "a")
    fresh = adapterhub.init(build(arch))
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(hidden(fresh, inputs, ACTIVE), expected)


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_composition(arch):
    inputs = make_inputs()
    model = make(arch, names=("a", "b", "c"))
    single = {n: hidden(model, inputs, n) for n in "abc"}
    # Stack: only the first adapter's invertible part applies; reference: b's invertible part made the identity
    stacked = hidden(model, inputs, Stack("a", "b"))
    inv_b = {k: v.clone() for k, v in model._adapterhub.adapters["b"].inv.state_dict().items()}
    with torch.no_grad():
        for p in model._adapterhub.adapters["b"].inv.parameters():
            p.zero_()
    assert torch.equal(hidden(model, inputs, Stack("a", "b")), stacked)
    model._adapterhub.adapters["b"].inv.load_state_dict(inv_b)
    assert not torch.allclose(hidden(model, inputs, Stack("b", "a")), stacked, atol=1e-4)
    # BatchSplit == separate passes
    for sizes in ([1, 1, 1], [2, 0, 1]):
        out = hidden(model, inputs, BatchSplit("a", "b", "c", batch_sizes=sizes))
        rows, start = [], 0
        for name, size in zip("abc", sizes):
            if size:
                rows.append(hidden(model, {k: v[start : start + size] for k, v in inputs.items()}, name))
            start += size
        torch.testing.assert_close(out, torch.cat(rows), atol=1e-5, rtol=0)
    # Split by positions past the end: a everywhere
    torch.testing.assert_close(
        hidden(model, inputs, Split("a", "b", split_index=100)), single["a"], atol=1e-5, rtol=0
    )
    # refused blocks name the block and the method
    for block in (Fuse("a", "b"), Average("a", "b"), Parallel("a", "b")):
        with pytest.raises(ConfigError, match=rf"{type(block).__name__}.*bottleneck_inv"):
            model.set_active_adapters(block)


@pytest.mark.parametrize("arch", DECODERS)
def test_inverse_applies_before_the_built_in_and_flexible_lm_heads(arch):
    inputs = make_inputs()
    model = make(arch, kind="causal_lm", names=("a",))
    module = model._adapterhub.adapters["a"]
    with torch.no_grad(), model.adapter_setup("a"):
        out = model(**inputs, output_hidden_states=True)
        last = out.hidden_states[-1]
        # the output embeddings' own forward would run the hook again: the plain projection
        expected = torch.nn.functional.linear(
            module.inv(last, rev=True), model.get_output_embeddings().weight
        )
        cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma 2/3: cap · tanh(logits / cap)
        if cap:
            expected = torch.tanh(expected / cap) * cap
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=0)
    model.add_causal_lm_head("a")
    with torch.no_grad(), model.adapter_setup("a"):
        flexible = model(**inputs).logits
        head = model._adapterhub.heads["a"]
        from adapterhub.runtime.head_inputs import HeadInputs

        reference = head(
            HeadInputs(
                hidden=module.inv(last, rev=True),
                attention_mask=inputs["attention_mask"],
                input_ids=inputs["input_ids"],
                embeddings=model.get_output_embeddings().weight,
            )
        ).logits
    torch.testing.assert_close(flexible, reference, atol=1e-5, rtol=0)

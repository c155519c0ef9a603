"""LoRA on every supported architecture: identity when inactive, training touches only LoRA, round trips, merging,
composition blocks against slow references, generate and torch.compile."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapterhub.errors import ConfigError
from tiny_models import QKV_ARCHITECTURES, QKV_DECODERS, build

ALL_TARGETS = "lora[r=4,alpha=8,targets=[q,k,v,attn_out,ffn_in,ffn_out]]"


def perturb(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)


def make(arch: str, kind: str = "base", names: tuple[str, ...] = ("a", "b"), config: str = ALL_TARGETS):
    model = adapterhub.init(build(arch, kind))
    for i, name in enumerate(names):
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], seed=10 + i)
    return model


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    ids = torch.randint(3, 90, (3, 6))
    mask = torch.ones_like(ids)
    mask[2, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


ACTIVE = object()  # run with the model's active setup (no per-call override)


def hidden(model, inputs, setup=None):
    """last_hidden_state under ``setup`` for this call only (None: no adapter), or the active setup."""
    with torch.no_grad():
        if setup is ACTIVE:
            return model(**inputs).last_hidden_state
        with model.adapter_setup(setup):
            return model(**inputs).last_hidden_state


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_inactive_is_bit_identical_and_active_changes_outputs(arch, inputs):
    model = make(arch)
    reference = build(arch)(**inputs).last_hidden_state
    assert torch.equal(hidden(model, inputs), reference)
    assert not torch.allclose(hidden(model, inputs, "a"), reference, atol=1e-4)


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_lora_equals_the_formula_on_each_projection(arch, inputs):
    """y = W x + b + (alpha / r) B A x, checked by adding ΔW to the weights of a plain copy of the model."""
    model = make(arch, names=("a",))
    plain = build(arch)
    spec, lora = model._spec, model._adapterhub.adapters["a"]
    with torch.no_grad():
        for key, sites in lora.layers.items():
            layer = adapterhub.runtime.layers.get_layers(plain, spec)[int(key)]
            for point, module in sites.items():
                linear = spec.linears[point]
                weight = layer.get_submodule(linear.module).weight
                delta = module.lora_B @ module.lora_A * (8 / 4)  # (d_out, d_in)
                delta = delta.t() if linear.transposed else delta
                if linear.part is None:
                    weight.add_(delta)
                else:
                    axis = 1 if linear.transposed else 0
                    width = weight.shape[axis] // linear.part[1]
                    weight.narrow(axis, linear.part[0] * width, width).add_(delta)
    torch.testing.assert_close(
        hidden(model, inputs, "a"), plain(**inputs).last_hidden_state, atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_one_training_step_changes_only_lora_and_head(arch, inputs):
    model = make(arch, names=("a", "b"))
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(**inputs, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed, "nothing trained"
    assert all(n.startswith(("_adapterhub.adapters.a.", "_adapterhub.heads.a.")) for n in changed), changed
    assert any(".lora_B" in n for n in changed) and any(".lora_A" in n for n in changed)


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_save_load_round_trip(arch, inputs, tmp_path):
    model = make(arch, names=("a",))
    expected = hidden(model, inputs, "a")
    model.save_adapter(tmp_path / "a", "a")
    fresh = adapterhub.init(build(arch))
    fresh.load_adapter(tmp_path / "a", set_active=True)
    assert torch.equal(hidden(fresh, inputs, ACTIVE), expected)
    from adapterhub.io.manifest import inspect_adapter_dir

    manifest = inspect_adapter_dir(tmp_path / "a")
    assert manifest.method == "lora" and manifest.num_parameters == model.adapter_summary()["a"].parameters


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_merge_and_unmerge(arch, inputs):
    model = make(arch, names=("a", "b"))
    model.set_active_adapters("a")
    unmerged = hidden(model, inputs, ACTIVE)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("_adapterhub")}
    model.merge_adapter("a")
    assert model.merged_adapters == ["a"]
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), unmerged, atol=1e-5, rtol=0)
    for setup in (
        "b",
        BatchSplit("a", "b", batch_sizes=[1, 2]),
        Parallel("a", "b"),
        Split("a", "b", split_index=2),
    ):
        with pytest.raises(ConfigError, match="merged"):
            model.set_active_adapters(setup)
    with pytest.raises(ConfigError, match="merged"), model.adapter_setup("a"):
        pass
    with pytest.raises(ConfigError, match="merged"):
        model.train_adapter("a")
    with pytest.raises(ConfigError, match="merged"):
        model.delete_adapter("a")
    with pytest.raises(ConfigError, match="merged"):
        adapterhub.deinit(model)
    with pytest.warns(UserWarning, match="merged"):
        model.save_pretrained(__import__("tempfile").mkdtemp())
    model.set_active_adapters(
        Stack("a", "b")
    )  # a Stack over a merged adapter is fine: its update is additive
    model.set_active_adapters("a")
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(param, weights[name], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        hidden(model, inputs, ACTIVE), unmerged, atol=1e-6, rtol=1e-5
    )  # float rounding


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_composition_blocks_equal_their_slow_references(arch, inputs):
    model = make(arch, names=("a", "b", "c"))
    reference = hidden(model, inputs)
    single = {n: hidden(model, inputs, n) for n in "abc"}
    # Stack: both updates added at each projection, W x + b + Δ_a x + Δ_b x; reference: a merged into W, b on top
    stacked = hidden(model, inputs, Stack("a", "b"))
    model.set_active_adapters(Stack("a", "b"))
    model.merge_adapter("a")
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), stacked, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    model.set_active_adapters(None)
    # BatchSplit == separate passes (grouped path), also with unequal sizes
    for sizes in ([1, 1, 1], [2, 0, 1]):
        out = hidden(model, inputs, BatchSplit("a", "b", "c", batch_sizes=sizes))
        rows, start = [], 0
        for name, size in zip("abc", sizes):
            part = {k: v[start : start + size] for k, v in inputs.items()}
            if size:
                rows.append(hidden(model, part, name))
            start += size
        torch.testing.assert_close(out, torch.cat(rows), atol=1e-5, rtol=0)
    # Parallel: one output per branch, each as the adapter alone
    with torch.no_grad(), model.adapter_setup(Parallel("a", "b")):
        parallel = model(**inputs)
    torch.testing.assert_close(parallel.last_hidden_state[0], single["a"], atol=1e-5, rtol=0)
    torch.testing.assert_close(parallel.last_hidden_state[1], single["b"], atol=1e-5, rtol=0)
    # Average of one adapter with itself is that adapter; Split at position 0.. runs a everywhere
    torch.testing.assert_close(hidden(model, inputs, Average("a", "a")), single["a"], atol=1e-5, rtol=0)
    split = hidden(model, inputs, Split("a", "b", split_index=100))
    torch.testing.assert_close(split, single["a"], atol=1e-5, rtol=0)
    assert not torch.equal(reference, split)
    # Fuse: refused with the block and the method named
    with pytest.raises(ConfigError, match=r"Fuse.*lora"):
        model.set_active_adapters(Fuse("a", "b"))


def test_mixed_stack_bottleneck_language_lora_task(inputs):
    """Stack(lang, task) with a bottleneck language adapter and a LoRA task adapter: each runs where it attaches,
    so the result equals LoRA merged into the weights under the bottleneck adapter alone."""
    model = adapterhub.init(build("bert"))
    model.add_adapter("lang", config="pfeiffer")
    perturb(model._adapterhub.adapters["lang"], seed=3, std=0.1)
    model.add_adapter("task", config="lora")
    perturb(model._adapterhub.adapters["task"], seed=4)
    stacked = hidden(model, inputs, Stack("lang", "task"))
    model.set_active_adapters(Stack("lang", "task"))
    model.merge_adapter("task")
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), stacked, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    assert not torch.allclose(stacked, hidden(model, inputs, "lang"), atol=1e-4)


@pytest.mark.parametrize("arch", QKV_DECODERS)
def test_generate_with_lora(arch):
    model = make(arch, kind="causal_lm", names=("a",), config="lora")
    model.set_active_adapters("a")
    ids = torch.randint(3, 90, (2, 4))
    cached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = model.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached) and cached.shape == (2, 8)


def test_torch_compile_fullgraph_with_lora(inputs):
    model = make("bert", names=("a",))
    model.set_active_adapters("a")
    reference = hidden(model, inputs, ACTIVE)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).last_hidden_state, reference, atol=1e-6, rtol=0)


def test_config_errors_and_parameter_counts():
    with pytest.raises(ConfigError, match="targets"):
        adapterhub.resolve_config("lora[targets=[query]]")
    with pytest.raises(ConfigError, match="r must be"):
        adapterhub.resolve_config("lora[r=0]")
    config = adapterhub.resolve_config("lora[r=16,alpha=32,use_rslora=true]")
    assert config.scaling == pytest.approx(32 / 4)
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match="no linear projection 'ffn_gate'"):
        model.add_adapter("g", config="lora[targets=[ffn_gate]]")
    model.add_adapter("a", config="lora")  # q and v, r 8: 2 layers x 2 targets x 8 x (32 + 32)
    assert model.adapter_summary()["a"].parameters == 2 * 2 * 8 * 64

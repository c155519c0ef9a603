"""Encoder-decoder models (T5, mT5, BART, mBART): every method at every site it can occupy, only there; layer
numbering (encoder first), training, save/load, generate, LoRA merge, composition, peft parity, refusals."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import transformers

import adapterhub
from adapterhub import BatchSplit, Fuse, Parallel, Stack
from adapterhub.errors import ConfigError, UnsupportedArchitectureError
from adapterhub.runtime.layers import get_layers
from adapterhub.spec.architectures import spec_for_config
from adapterhub.spec.configs import resolve_config
from tiny_models import SEQ2SEQ, build, make_seq2seq_inputs, perturb

T5_LIKE = ("t5", "mt5")
TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5


def prefix_ok(arch: str) -> bool:
    """transformers 4.x computes T5's attention itself (no AttentionInterface): prefix tuning is refused there."""
    return not (TRANSFORMERS_4 and arch in T5_LIKE)


def logits(model: Any, inputs: dict[str, torch.Tensor], setup: Any = "none") -> torch.Tensor:
    with torch.no_grad():
        if setup == "none":
            return model(**inputs).logits  # type: ignore[no-any-return]
        with model.adapter_setup(setup):
            return model(**inputs).logits  # type: ignore[no-any-return]


def model_for(arch: str, dtype: torch.dtype = torch.float32) -> Any:
    return adapterhub.init(build(arch, "seq2seq_lm").to(dtype))


def encoder_layers(model: Any) -> int:
    return int(model.model_dims().decoder_start)


@contextmanager
def recorded(model: Any) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """``(name, output)`` of every module inside the transformer layers, in the order their forwards finish;
    names are ``<layer number>.<path in the layer>`` (encoder layers first)."""
    calls: list[tuple[str, torch.Tensor]] = []
    handles = []
    for index, layer in enumerate(get_layers(model, model._spec)):
        for path, module in layer.named_modules():
            name = f"{index}.{path}" if path else str(index)

            def hook(module: Any, args: Any, output: Any, name: str = name) -> None:
                value = output[0] if isinstance(output, tuple) else output
                if isinstance(value, torch.Tensor):
                    calls.append((name, value.detach().clone()))

            handles.append(module.register_forward_hook(hook))
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def first_change(model: Any, inputs: dict[str, torch.Tensor], setup: str) -> str:
    """The first module (in execution order) whose output differs between the bare model and ``setup``."""
    with recorded(model) as bare:
        logits(model, inputs)
    with recorded(model) as adapted:
        logits(model, inputs, setup)
    assert [n for n, _ in bare] == [n for n, _ in adapted]
    for (name, a), (_, b) in zip(bare, adapted, strict=True):
        if not torch.equal(a, b):
            return name
    raise AssertionError("the adapter changed no module output")


def all_but(model: Any, layer: int) -> list[int]:
    return [i for i in range(model.model_dims().num_layers) if i != layer]


# ------------------------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_init_and_deinit_leave_outputs_bit_identical(arch: str) -> None:
    inputs = make_seq2seq_inputs()
    bare = build(arch, "seq2seq_lm")
    expected = logits(bare, inputs)
    model = adapterhub.init(build(arch, "seq2seq_lm"))
    assert torch.equal(logits(model, inputs), expected)
    model.add_adapter("a", config="houlsby[after_cross_attention=true]")
    if prefix_ok(arch):
        model.add_adapter("p", config="prefix_tuning[prefix_length=3]")
    assert torch.equal(logits(model, inputs), expected)  # added, not active
    adapterhub.deinit(model)
    assert torch.equal(logits(model, inputs), expected)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_layers_are_numbered_encoder_first(arch: str) -> None:
    model = model_for(arch)
    config = model.config
    n_enc = config.num_layers if arch in T5_LIKE else config.encoder_layers
    n_dec = config.num_decoder_layers if arch in T5_LIKE else config.decoder_layers
    dims = model.model_dims()
    assert (dims.decoder_start, dims.num_layers) == (n_enc, n_enc + n_dec)
    assert dims.residual_points == ("attn", "ffn", "cross_attn")
    layers = get_layers(model, model._spec)
    decoder = model.get_decoder() if arch in T5_LIKE else model.model.decoder
    assert layers[n_enc] is (decoder.block[0] if arch in T5_LIKE else decoder.layers[0])


SITE_CASES = [
    ("attn", "encoder"),
    ("attn", "decoder"),
    ("cross_attn", "decoder"),
    ("ffn", "encoder"),
    ("ffn", "decoder"),
]


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_bottleneck_site_changes_outputs_there_first(arch: str) -> None:
    """One adapter at one site of one layer: the first module output that changes is that site's (the LayerNorm
    after it in post-norm BART, the sub-layer itself in pre-norm T5 / mBART); nothing before it changes."""
    inputs = make_seq2seq_inputs()
    model = model_for(arch)
    for site, stack in SITE_CASES:
        layer = 1 if stack == "encoder" else encoder_layers(model) + 1
        flags = {
            "after_attention": site == "attn",
            "after_ffn": site == "ffn",
            "after_cross_attention": site == "cross_attn",
        }
        config = resolve_config("pfeiffer").replace(**flags, leave_out=all_but(model, layer))
        model.add_adapter("a", config=config)
        perturb(model._adapterhub.adapters["a"])
        assert model._adapterhub.adapters["a"].points(layer) == (("residual", site),)
        assert model.adapter_summary()["a"].parameters == 2 * 2 * 32 + 32 + 2  # one adapter, d 32, m 2
        spec = model._spec.stacks()[0 if stack == "encoder" else 1].sites[site]
        assert first_change(model, inputs, "a") == f"{layer}.{spec.norm or spec.output}", (site, stack)
        model.delete_adapter("a")


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_cross_attention_adapters_only_in_decoder_layers(arch: str) -> None:
    inputs = make_seq2seq_inputs()
    model = model_for(arch)
    config = resolve_config("pfeiffer").replace(after_ffn=False, after_cross_attention=True)
    model.add_adapter("x", config=config)
    perturb(model._adapterhub.adapters["x"])
    module = model._adapterhub.adapters["x"]
    start, total = encoder_layers(model), model.model_dims().num_layers
    assert [i for i in range(total) if module.points(i)] == list(range(start, total))
    with torch.no_grad(), model.adapter_setup("x"):
        out = model(**inputs)
    with torch.no_grad():
        bare = model(**inputs)
    assert torch.equal(out.encoder_last_hidden_state, bare.encoder_last_hidden_state)
    assert not torch.allclose(out.logits, bare.logits)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_leave_out_counts_encoder_then_decoder_layers(arch: str) -> None:
    inputs = make_seq2seq_inputs()
    model = model_for(arch)
    start, total = encoder_layers(model), model.model_dims().num_layers
    model.add_adapter("dec", config=f"pfeiffer[leave_out={list(range(start))}]")
    model.add_adapter("enc", config=f"pfeiffer[leave_out={list(range(start, total))}]")
    for name in ("dec", "enc"):
        perturb(model._adapterhub.adapters[name])
    with torch.no_grad():
        bare = model(**inputs)
    with torch.no_grad(), model.adapter_setup("dec"):
        dec = model(**inputs)
    with torch.no_grad(), model.adapter_setup("enc"):
        enc = model(**inputs)
    assert torch.equal(dec.encoder_last_hidden_state, bare.encoder_last_hidden_state)
    assert not torch.allclose(enc.encoder_last_hidden_state, bare.encoder_last_hidden_state)
    with pytest.raises(ConfigError, match=f"has {total} layers"):
        model.add_adapter("bad", config=f"pfeiffer[leave_out=[{total}]]")


def linear_points(arch: str) -> list[str]:
    points = ["q", "k", "v", "attn_out", "ffn_in", "ffn_out", "cross_q", "cross_k", "cross_v", "cross_out"]
    return points + (["ffn_gate"] if arch == "mt5" else [])


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_lora_point_changes_that_projection_first(arch: str) -> None:
    inputs = make_seq2seq_inputs()
    model = model_for(arch)
    for point in linear_points(arch):
        layer = encoder_layers(model) + 1 if point.startswith("cross") else 1
        config = {"method": "lora", "targets": [point], "leave_out": all_but(model, layer)}
        model.add_adapter("l", config=config)
        perturb(model._adapterhub.adapters["l"])
        stack = model._spec.stacks()[1 if point.startswith("cross") else 0]
        assert first_change(model, inputs, "l") == f"{layer}.{stack.linears[point].module}", point
        model.delete_adapter("l")


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_cross_projections_exist_in_decoder_layers_only(arch: str) -> None:
    model = model_for(arch)
    model.add_adapter("l", config="lora[r=2,targets=[q,cross_v]]")
    start, total = encoder_layers(model), model.model_dims().num_layers
    module = model._adapterhub.adapters["l"]
    assert module.points(0) == (("linear", "q"),)
    assert module.points(start) == (("linear", "q"), ("linear", "cross_v"))
    assert model.adapter_summary()["l"].parameters == 2 * 64 * total + 2 * 64 * (total - start)
    model.add_adapter("i", config="ia3[targets=[cross_k],input_targets=[]]")
    assert model.adapter_summary()["i"].parameters == 32 * (total - start)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_prefix_tuning_reaches_self_and_cross_attention(arch: str) -> None:
    """Decoder layers get a self- and a cross-attention prefix (``cross_prefix``, default true); with the same
    self-attention prefixes, the first output that differs between the two configs is a cross-attention's."""
    if not prefix_ok(arch):
        with pytest.raises(ConfigError, match="computes attention itself"):
            model_for(arch).add_adapter("p", config="prefix_tuning")
        return
    inputs = make_seq2seq_inputs()
    model = model_for(arch)
    model.add_adapter("both", config="prefix_tuning[prefix_length=4,bottleneck_size=16]")
    model.add_adapter("self", config="prefix_tuning[prefix_length=4,bottleneck_size=16,cross_prefix=false]")
    both, only_self = (model._adapterhub.adapters[n] for n in ("both", "self"))
    start, total = encoder_layers(model), model.model_dims().num_layers
    assert len(both.cross_slots) == total - start and not only_self.cross_slots
    assert both.points(start) == (("attention", "self"), ("attention", "cross"))
    assert only_self.points(start) == (("attention", "self"),)
    perturb(both)
    with torch.no_grad():  # the self slots come first: copy them
        for key, value in only_self.state_dict().items():
            source = both.state_dict()[key]
            value.copy_(source[: value.shape[0]] if value.shape != source.shape else source)
    with recorded(model) as a:
        logits(model, inputs, "self")
    with recorded(model) as b:
        logits(model, inputs, "both")
    first = next(n for (n, x), (_, y) in zip(a, b, strict=True) if not torch.equal(x, y))
    cross = model._spec.decoder.cross_attention
    assert first.startswith(f"{start}.{cross}.")  # inside the first decoder layer's cross-attention
    assert "cross_prefix" not in resolve_config("prefix_tuning").to_dict()  # default: configs unchanged


def test_new_options_at_their_default_leave_saved_configs_unchanged() -> None:
    pfeiffer = resolve_config("pfeiffer")
    assert "after_cross_attention" not in pfeiffer.to_dict()
    crossed = pfeiffer.replace(after_cross_attention=True)
    assert crossed.to_dict()["after_cross_attention"] is True
    assert resolve_config(crossed.to_dict()) == crossed
    assert crossed.canonical_hash() != pfeiffer.canonical_hash()


# ------------------------------------------------------------------------------------------------ methods

METHODS = {
    "houlsby": "houlsby[after_cross_attention=true]",
    "lora": "lora[r=4,alpha=8,targets=[q,k,v,attn_out,cross_q,cross_k,cross_v,cross_out,ffn_out]]",
    "ia3": "ia3[targets=[k,v,cross_k,cross_v],input_targets=[ffn_out]]",
    "dora": "dora[r=4,targets=[q,v,cross_q,cross_v]]",
    "prefix": "prefix_tuning[prefix_length=4,bottleneck_size=16]",
    "parallel": "parallel[after_cross_attention=true]",
    "compacter": "compacter[reduction_factor=8,after_cross_attention=true]",
}


def methods_for(arch: str) -> dict[str, str]:
    return {k: v for k, v in METHODS.items() if k != "prefix" or prefix_ok(arch)}


def seq2seq_labels(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.roll(inputs["decoder_input_ids"], -1, dims=1)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_training_changes_only_the_adapter(arch: str) -> None:
    inputs = make_seq2seq_inputs()
    model = model_for(arch)
    for method, config in methods_for(arch).items():
        model.add_adapter(method, config=config)
        perturb(model._adapterhub.adapters[method], std=0.05)
        model.train_adapter(method)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        model(**inputs, labels=seq2seq_labels(inputs)).loss.backward()
        optimizer.step()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert changed and all(n.startswith(f"_adapterhub.adapters.{method}.") for n in changed), method
        cross = {n: p for n, p in model.named_parameters() if n.startswith("_adapterhub.") and "cross" in n}
        assert all(p.grad is not None for p in cross.values()), method  # the cross-attention parts learn too
        assert not cross or set(cross) & changed, method
        model.delete_adapter(method)
        model.eval()


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_save_and_load_round_trip(arch: str, tmp_path: Any) -> None:
    from adapterhub.io.manifest import inspect_adapter_dir

    inputs = make_seq2seq_inputs()
    model, fresh = model_for(arch), model_for(arch)
    bare = logits(model, inputs)
    for method, config in methods_for(arch).items():
        model.add_adapter(method, config=config)
        perturb(model._adapterhub.adapters[method], std=0.1)
        expected = logits(model, inputs, method)
        assert not torch.allclose(expected, bare), method
        model.save_adapter(tmp_path / method, method)
        fresh.load_adapter(tmp_path / method)
        assert torch.equal(logits(fresh, inputs, method), expected), method
        manifest = inspect_adapter_dir(tmp_path / method)  # checked without a model, as the hub does
        assert manifest.num_parameters == model.adapter_summary()[method].parameters, method


def greedy(model: Any, inputs: dict[str, torch.Tensor], steps: int) -> torch.Tensor:
    """Greedy decoding by full forward passes (no cache), the reference for ``generate``."""
    start = model.config.decoder_start_token_id
    ids = torch.full((inputs["input_ids"].shape[0], 1), start, dtype=torch.long)
    with torch.no_grad():
        for _ in range(steps):
            out = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], decoder_input_ids=ids
            )
            ids = torch.cat([ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_generate_uses_the_active_adapter(arch: str) -> None:
    inputs = make_seq2seq_inputs()
    model = model_for(arch)
    model.generation_config.eos_token_id = None  # always 6 new tokens
    model.generation_config.forced_bos_token_id = None
    source = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    options: dict[str, Any] = {"max_new_tokens": 6, "do_sample": False}
    scored = {**options, "output_scores": True, "return_dict_in_generate": True}
    bare = model.generate(**source, **scored)
    for method in [m for m in ("houlsby", "lora", "prefix") if m in methods_for(arch)]:
        model.add_adapter(method, config=METHODS[method])
        perturb(model._adapterhub.adapters[method], std=0.5)
        model.set_active_adapters(method)
        generated = model.generate(**source, **scored)  # with the KV cache
        assert torch.equal(generated.sequences, greedy(model, inputs, 6)), method
        assert not torch.allclose(generated.scores[0], bare.scores[0]), method  # the adapter is used
        model.set_active_adapters(None)
    assert torch.equal(model.generate(**source, **options), bare.sequences)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_lora_merge_and_unmerge(arch: str) -> None:
    inputs = make_seq2seq_inputs()
    model = model_for(arch, torch.float64)  # float64: merging is exact up to its rounding
    model.add_adapter("a", config=METHODS["lora"])
    perturb(model._adapterhub.adapters["a"], std=0.1)
    model.set_active_adapters("a")
    unmerged = logits(model, inputs)
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("_adapterhub")}
    model.merge_adapter("a")
    torch.testing.assert_close(logits(model, inputs), unmerged, atol=1e-10, rtol=0)
    changed = [n for n, p in model.named_parameters() if n in weights and not torch.equal(p, weights[n])]
    assert any("EncDecAttention" in n or "encoder_attn" in n for n in changed)
    model.unmerge_adapter()
    for name, param in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(param, weights[name], atol=1e-12, rtol=0)
    torch.testing.assert_close(logits(model, inputs), unmerged, atol=1e-10, rtol=0)


# ------------------------------------------------------------------------------------------------ composition


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_stack_of_bottleneck_and_lora_equals_lora_merged_under_the_bottleneck(arch: str) -> None:
    inputs = make_seq2seq_inputs()
    model = model_for(arch, torch.float64)
    model.add_adapter("b", config=METHODS["houlsby"])
    model.add_adapter("l", config=METHODS["lora"])
    perturb(model._adapterhub.adapters["b"], std=0.1)
    perturb(model._adapterhub.adapters["l"], std=0.1)
    stacked = logits(model, inputs, Stack("b", "l"))
    model.merge_adapter("l")
    model.set_active_adapters(Stack("b", "l"))
    torch.testing.assert_close(logits(model, inputs), stacked, atol=1e-10, rtol=0)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_batch_split_runs_each_row_block_through_its_adapter(arch: str) -> None:
    inputs = make_seq2seq_inputs()
    model = model_for(arch)
    for name, config in (("a", METHODS["houlsby"]), ("b", METHODS["houlsby"]), ("p", METHODS["prefix"])):
        if name == "p" and not prefix_ok(arch):
            continue
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], std=0.1)
    for pair in (("a", "b"), ("a", "p")) if prefix_ok(arch) else (("a", "b"),):
        out = logits(model, inputs, BatchSplit(*pair, batch_sizes=[2, 1]))
        rows = [
            logits(model, {k: v[:2] for k, v in inputs.items()}, pair[0]),
            logits(model, {k: v[2:] for k, v in inputs.items()}, pair[1]),
        ]
        torch.testing.assert_close(out, torch.cat(rows), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_fuse_mixes_adapters_at_every_site_of_both_stacks(arch: str) -> None:
    from adapterhub.runtime.fusion import record_fusion_attentions

    inputs = make_seq2seq_inputs()
    model = model_for(arch)
    for name in ("a", "b"):
        model.add_adapter(name, config=METHODS["houlsby"])
        perturb(model._adapterhub.adapters[name], std=0.1)
    model.add_adapter_fusion(Fuse("a", "b"))
    with record_fusion_attentions() as records:
        fused = logits(model, inputs, Fuse("a", "b"))
    start, total = encoder_layers(model), model.model_dims().num_layers
    sites = {(layer, site) for _, layer, site, _ in records}
    assert sites == {(i, s) for i in range(start) for s in ("attn", "ffn")} | {
        (i, s) for i in range(start, total) for s in ("attn", "cross_attn", "ffn")
    }
    for _, layer, _, probs in records:
        assert probs.shape == (3, 7 if layer < start else 5, 2)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:2]))
    assert not torch.allclose(fused, logits(model, inputs, "a"))


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_parallel_is_refused(arch: str) -> None:
    model = model_for(arch)
    model.add_adapter("a", config="pfeiffer")
    model.add_adapter("b", config="pfeiffer")
    with pytest.raises(ConfigError, match="Parallel is not supported on models with two layer stacks"):
        model.set_active_adapters(Parallel("a", "b"))


@pytest.mark.parametrize("arch", ["t5", "bart"])
@pytest.mark.parametrize("config", ["prompt_tuning", "pfeiffer+inv"])
def test_embedding_methods_are_refused(arch: str, config: str) -> None:
    model = model_for(arch)
    with pytest.raises((ConfigError, UnsupportedArchitectureError), match=r"embedding|transformers >= 5"):
        model.add_adapter("e", config=config)
    assert not model.has_adapter("e")


def test_t5_spec_follows_the_feed_forward_variant() -> None:
    plain, gated = build("t5").config, build("mt5").config
    assert "ffn_gate" not in spec_for_config(plain).linears
    assert spec_for_config(gated).linears["ffn_gate"].module == "layer.1.DenseReluDense.wi_0"
    gated_t5 = build("t5", feed_forward_proj="gated-gelu").config
    assert spec_for_config(gated_t5) is spec_for_config(gated)


# ------------------------------------------------------------------------------------------------ peft parity

PEFT_TARGETS = {"t5": ["q", "v"], "bart": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("arch", list(PEFT_TARGETS))
def test_lora_equals_peft(arch: str) -> None:
    """peft's LoRA on q and v (it matches self- and cross-attention by module name) and ours on q, v, cross_q,
    cross_v with the same weights give the same logits."""
    peft = pytest.importorskip("peft")
    inputs = make_seq2seq_inputs()
    base = build(arch, "seq2seq_lm")
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_TARGETS[arch])
    ).eval()
    ours = adapterhub.init(base)
    ours.add_adapter("a", config="lora[r=4,alpha=8,targets=[q,v,cross_q,cross_v]]", set_active=True)
    generator = torch.Generator().manual_seed(5)
    layers = get_layers(ours, ours._spec)
    module_of = {id(m): i for i, layer in enumerate(layers) for m in layer.modules()}
    copied = 0
    for name, module in theirs.named_modules():
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        path = name.split("base_model.model.", 1)[1]
        original = base.get_submodule(path)
        layer = module_of[id(original)]
        stack = ours._spec.stacks()[0 if layer < encoder_layers(ours) else 1]
        point = next(
            p for p, lin in stack.linears.items() if layers[layer].get_submodule(lin.module) is original
        )
        with torch.no_grad():
            module.lora_B["default"].weight.normal_(0, 0.3, generator=generator)
            target = ours._adapterhub.adapters["a"].layer_at(layer, point)
            target.lora_A.copy_(module.lora_A["default"].weight)
            target.lora_B.copy_(module.lora_B["default"].weight)
        copied += 1
    assert copied == 2 * encoder_layers(ours) + 4 * (ours.model_dims().num_layers - encoder_layers(ours))
    with torch.no_grad():
        expected = theirs(**inputs).logits
        got = ours(**inputs).logits
    assert not torch.allclose(expected, logits(adapterhub.deinit(copy.deepcopy(ours)), inputs))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # measured: equal (max |diff| 0.0)
    assert ours.adapter_summary()["a"].parameters == theirs.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("head_type", ["causal_lm", "classification"])
def test_flexible_heads_are_refused_use_the_models_own(head_type: str) -> None:
    model = model_for("bart")
    with pytest.raises(ConfigError, match="AutoModelForSeq2SeqLM"):
        model.add_head("h", head_type, **({"num_labels": 2} if head_type == "classification" else {}))
    assert "h" not in model._adapterhub.heads


@pytest.mark.parametrize(
    "layout", ["adapters"]
)  # peft's LoRA layout: tests/compat/test_peft_encoder_decoder.py
def test_other_libraries_layouts_are_refused(layout: str, tmp_path: Any) -> None:
    from adapterhub.errors import AdapterFileError
    from adapterhub.io.loading import read_any_adapter_dir

    model = model_for("t5")
    model.add_adapter("a", config="lora" if layout == "peft" else "pfeiffer")
    with pytest.raises(ConfigError, match="encoder-decoder"):
        model.save_adapter(tmp_path / "a", "a", layout=layout)
    assert not (tmp_path / "a").exists()
    bert = adapterhub.init(build("bert"))  # a directory in that layout, offered to the T5 model
    bert.add_adapter("a", config="lora" if layout == "peft" else "pfeiffer")
    bert.save_adapter(tmp_path / "b", "a", layout=layout)
    with pytest.raises(AdapterFileError, match="encoder-decoder"):
        read_any_adapter_dir(tmp_path / "b", spec=model._spec)

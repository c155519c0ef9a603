"""Prefix tuning on every supported architecture (tiny random models, transformers 5.x)."""

import pytest
import torch
import transformers

import adapterhub
from adapterhub import Average, BatchSplit, ConfigError, Fuse, Parallel, Split, Stack
from adapterhub.api.model import deinit
from adapterhub.methods.prefix_tuning import PrefixTuningConfig
from tiny_models import ARCHITECTURES, DECODERS, build, make_inputs

# transformers 4.x computes BERT-family / DistilBERT attention without AttentionInterface: decoders only there
ON_4X = int(transformers.__version__.split(".")[0]) < 5
ARCHS = [
    a for a in (DECODERS if ON_4X else ARCHITECTURES) if a != "deberta-v2"
]  # refused there: test_new_archs
CONFIG = "prefix_tuning[prefix_length=3,bottleneck_size=8]"


def hidden(model, **inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def prefixed(arch, name="p", config=CONFIG, **build_kwargs):
    model = adapterhub.init(build(arch, **build_kwargs))
    model.add_adapter(name, config=config, set_active=True)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_bit_identical_without_active_prefix_and_after_deinit(arch):
    model = build(arch)
    inputs = make_inputs()
    base = hidden(model, **inputs)
    implementation = model.config._attn_implementation
    adapterhub.init(model)
    model.add_adapter("p", config=CONFIG)
    assert model.config._attn_implementation == f"adapterhub_{implementation}"
    assert torch.equal(hidden(model, **inputs), base)
    model.set_active_adapters("p")
    assert not torch.allclose(hidden(model, **inputs), base, atol=1e-3)
    deinit(model)
    assert model.config._attn_implementation == implementation
    assert torch.equal(hidden(model, **inputs), base)


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_and_attention_implementations_agree(arch):
    model = prefixed(arch)
    inputs = make_inputs()
    out = hidden(model, **inputs)
    # a padded row's real positions equal the same row unpadded
    alone = hidden(model, input_ids=inputs["input_ids"][2:, :5])
    assert torch.allclose(out[2:, :5], alone, atol=1e-5)
    # without a mask argument (sdpa: no mask at all; causal models must still be causal with the prefix)
    full = hidden(model, input_ids=inputs["input_ids"][:2])
    assert torch.allclose(full, out[:2], atol=1e-5)
    if arch in DECODERS:  # causal: a position does not see later tokens
        assert torch.allclose(hidden(model, input_ids=inputs["input_ids"][:2, :4]), out[:2, :4], atol=1e-5)
    eager = prefixed(arch, attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    assert eager.config._attn_implementation == "adapterhub_eager"
    assert torch.allclose(hidden(eager, **inputs), out, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_changes_only_the_prefix(arch):
    model = prefixed(arch)
    model.train_adapter("p")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(
        n.startswith("_adapterhub.adapters.p.") for n, p in model.named_parameters() if p.requires_grad
    )
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    (model(**make_inputs()).last_hidden_state * torch.linspace(-1, 1, 32)).sum().backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("_adapterhub.adapters.p.") for k in changed)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_and_eject(arch, tmp_path):
    model = prefixed(arch)
    inputs = make_inputs()
    out = hidden(model, **inputs)
    model.save_adapter(tmp_path / "mlp", "p")
    fresh = adapterhub.init(build(arch))
    fresh.load_adapter(tmp_path / "mlp", set_active=True)
    assert torch.equal(hidden(fresh, **inputs), out)
    model.eject_prefix("p")
    assert model.adapters["p"].flat
    assert torch.allclose(hidden(model, **inputs), out, atol=1e-5)
    model.save_adapter(tmp_path / "flat", "p")
    fresh = adapterhub.init(build(arch))
    fresh.load_adapter(tmp_path / "flat", set_active=True)
    assert torch.allclose(hidden(fresh, **inputs), out, atol=1e-5)


@pytest.mark.parametrize("arch", DECODERS)
def test_generate_with_kv_cache(arch):
    model = adapterhub.init(build(arch, kind="causal_lm"))
    ids = make_inputs()["input_ids"][:1]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    base = model.generate(ids, **kwargs)
    model.add_adapter("p", config=CONFIG, set_active=True)
    with torch.no_grad():
        for param in model._adapterhub.adapters["p"].parameters():
            param.mul_(20)  # make the prefix change the greedy choice
    cached = model.generate(ids, use_cache=True, **kwargs)
    uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, base)
    with model.adapter_setup(None):
        assert torch.equal(model.generate(ids, **kwargs), base)


@pytest.mark.parametrize("arch", [a for a in ("bert", "distilbert", "gpt2", "llama") if a in ARCHS])
def test_stack_is_the_concatenated_prefix_and_batch_split_is_separate_passes(arch):
    model = adapterhub.init(build(arch))
    model.add_adapter("a", config=CONFIG)
    model.add_adapter("b", config="prefix_tuning[prefix_length=2,bottleneck_size=8]")
    inputs = make_inputs()
    with model.adapter_setup(Stack("a", "b")):
        stacked = hidden(model, **inputs)
    model.eject_prefix("a")
    model.eject_prefix("b")
    adapters = model._adapterhub.adapters
    model.add_adapter("ba", config="prefix_tuning[prefix_length=5,flat=true]")
    with torch.no_grad():  # their layout: (P, L·2·H_kv·D) flattened; Stack(a, b) gives keys [b, a, real]
        width = adapters["a"].width
        concat = torch.cat(
            [adapters["b"].control_trans.view(2, width), adapters["a"].control_trans.view(3, width)]
        )
        adapters["ba"].control_trans.copy_(concat.reshape(-1))
    with model.adapter_setup("ba"):
        assert torch.allclose(hidden(model, **inputs), stacked, atol=1e-5)

    with model.adapter_setup(BatchSplit("a", "b", batch_sizes=[1, 2])):
        split = hidden(model, **inputs)
    with model.adapter_setup("a"):
        first = hidden(model, **{k: v[:1] for k, v in inputs.items()})
    with model.adapter_setup("b"):
        rest = hidden(model, **{k: v[1:] for k, v in inputs.items()})
    assert torch.allclose(split, torch.cat([first, rest]), atol=1e-5)
    with model.adapter_setup(Average("a", "b")):
        assert hidden(model, **inputs).shape == stacked.shape
    with model.adapter_setup("a"):
        alone = hidden(model, **inputs)
    # a weighted mean of one value is that value
    with model.adapter_setup(Average("a", "a", weights=[0.3, 0.7])):
        assert torch.allclose(hidden(model, **inputs), alone, atol=1e-5)
    with model.adapter_setup(Parallel("a", "b")):
        parallel = hidden(model, **inputs)
    for i, name in enumerate(("a", "b")):
        with model.adapter_setup(name):
            assert torch.allclose(parallel[i], hidden(model, **inputs), atol=1e-5)


def test_fuse_and_split_are_refused():
    model = prefixed("gpt2")
    model.add_adapter("q", config=CONFIG)
    with pytest.raises(ConfigError, match="prefix_tuning"):
        model.set_active_adapters(Fuse("p", "q"))
    with pytest.raises(ConfigError, match="prefix_tuning"):
        model.set_active_adapters(Split("p", "q", split_index=3))


@pytest.mark.parametrize("arch", [a for a in ("bert", "llama") if a in ARCHS])
def test_parameter_count_and_grouped_query_shapes(arch):
    model = adapterhub.init(build(arch))
    config = PrefixTuningConfig(prefix_length=4, bottleneck_size=8, leave_out=[0])
    model.add_adapter("p", config=config)
    d, layers = 32, 1
    kv_heads = 2 if arch == "llama" else 4  # the tiny llama has 2 key/value heads for 4 query heads
    n = layers * 2 * kv_heads * 8
    module = model._adapterhub.adapters["p"]
    assert sum(p.numel() for p in module.parameters()) == 4 * d + d * 8 + 8 + 8 * n + n
    keys, values = module.prefix(1)
    assert keys.shape == values.shape == (1, kv_heads, 4, 8)
    assert module.points(0) == ()
    model.eject_prefix("p")
    assert sum(p.numel() for p in module.parameters()) == 4 * n


def test_config_strings_and_validation():
    config = adapterhub.resolve_config("prefix_tuning[prefix_length=10]")
    assert isinstance(config, PrefixTuningConfig) and config.prefix_length == 10
    assert config.bottleneck_size == 512 and config.non_linearity == "tanh" and not config.flat
    assert adapterhub.resolve_config(config.to_dict()) == config
    for bad in (
        {"prefix_length": 0},
        {"bottleneck_size": -1},
        {"non_linearity": "nope"},
        {"dropout": 1.5},
        {"flat": "yes"},
        {"leave_out": [-1]},
    ):
        with pytest.raises(ConfigError):
            PrefixTuningConfig(**bad)
    model = adapterhub.init(build("llama"))
    with pytest.raises(ConfigError, match="leave_out"):
        model.add_adapter("p", config="prefix_tuning[leave_out=[5]]")


def test_hooks_hold_no_model():
    import gc
    import weakref

    model = prefixed("llama")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_deep_copy_carries_its_own_prefix():
    import copy

    model = prefixed("llama")
    inputs = make_inputs()
    out = hidden(model, **inputs)
    twin = copy.deepcopy(model)
    assert torch.equal(hidden(twin, **inputs), out)
    with torch.no_grad():
        for param in twin._adapterhub.adapters["p"].parameters():
            param.zero_()
    assert not torch.allclose(hidden(twin, **inputs), out, atol=1e-3)
    assert torch.equal(hidden(model, **inputs), out)

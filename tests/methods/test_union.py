"""Method unions (``MethodUnion``, presets ``mam`` and ``unipelt``): the parts of a union run as a Stack of
separate adapters would, under one adapter name."""

import pytest
import torch
import transformers

import adapterhub
from adapterhub import ConfigError, Fuse, LoRAConfig, MethodUnion, Stack
from adapterhub.methods import ParallelConfig, PrefixTuningConfig
from tiny_models import build, make_inputs


def hidden(model, **inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def perturb(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def union_module(model, name):
    return model._adapterhub.adapters[name]


def add_union_and_parts(model, *configs):
    """Adapter ``u`` = MethodUnion(*configs), perturbed; adapters ``p0``, ``p1``, ... with its parts' weights."""
    model.add_adapter("u", config=MethodUnion(*configs))
    union = union_module(model, "u")
    perturb(union)
    names = []
    for i, config in enumerate(union.config.configs):
        model.add_adapter(f"p{i}", config=config)
        union_module(model, f"p{i}").load_state_dict(union.parts[i].state_dict())
        names.append(f"p{i}")
    return names


CASES = {
    "mam": (PrefixTuningConfig(prefix_length=3, bottleneck_size=8), ParallelConfig()),
    "bottleneck+lora": ("pfeiffer", LoRAConfig(r=2, targets=("q", "v"))),
    "lora+lora same point": (LoRAConfig(r=2, targets=("q",)), LoRAConfig(r=3, alpha=6, targets=("q", "k"))),
    "houlsby+pfeiffer same site": ("houlsby", "pfeiffer"),
    "unipelt": ("gated_prefix_tuning[prefix_length=3]", "gated_bottleneck", "gated_lora"),
}


# two bottleneck adapters at one site: one architecture is enough
# transformers 4.x: prefix tuning (in mam and unipelt) reaches decoders only, so encoders use llama there
ON_4X = int(transformers.__version__.split(".")[0]) < 5
ENCODER = "llama" if ON_4X else "bert"
UNION_MATRIX = [
    (arch, case)
    for case in CASES
    for arch in ("bert", "gpt2", "llama")
    if not (ON_4X and arch == "bert" and case in ("mam", "unipelt"))
    if arch == "bert" or not case.startswith("houlsby")
]


@pytest.mark.parametrize(("arch", "case"), UNION_MATRIX)
def test_union_equals_stack_of_its_parts_and_inactive_is_bit_identical(arch, case):
    model = adapterhub.init(build(arch))
    inputs = make_inputs()
    base = hidden(model, **inputs)
    names = add_union_and_parts(model, *CASES[case])
    assert torch.equal(hidden(model, **inputs), base)
    model.set_active_adapters("u")
    got = hidden(model, **inputs)
    assert not torch.allclose(got, base)
    model.set_active_adapters(Stack(*names))
    assert torch.allclose(got, hidden(model, **inputs), atol=1e-6)
    model.set_active_adapters(None)
    assert torch.equal(hidden(model, **inputs), base)


def test_presets_are_the_adapters_library_configs():
    mam = adapterhub.resolve_config("mam")
    assert [c.method for c in mam.configs] == ["prefix_tuning", "parallel"]
    assert (mam[0].prefix_length, mam[0].bottleneck_size) == (30, 800)
    assert (mam[1].reduction_factor, mam[1].scaling, mam[1].sites) == (2, 4.0, ("ffn",))
    unipelt = adapterhub.resolve_config("unipelt")
    assert [c.method for c in unipelt.configs] == ["gated_prefix_tuning", "gated_bottleneck", "gated_lora"]
    assert (unipelt[0].prefix_length, unipelt[1].reduction_factor, unipelt[2].r, unipelt[2].alpha) == (
        10,
        16,
        8,
        2,
    )


def test_config_api_round_trip_and_equality():
    union = MethodUnion(PrefixTuningConfig(prefix_length=5), "par_bn")
    data = union.to_dict()
    assert data["method"] == "union" and [c["method"] for c in data["configs"]] == [
        "prefix_tuning",
        "parallel",
    ]
    assert MethodUnion.from_dict(data) == union == adapterhub.resolve_config(data)
    assert MethodUnion(configs=data["configs"]) == union
    assert union.canonical_hash() == MethodUnion.from_dict(data).canonical_hash()
    assert hash(union) == hash(MethodUnion.from_dict(data))
    assert len(union) == 2 and union[0].prefix_length == 5


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MethodUnion("lora"), "at least two parts"),
        (lambda: MethodUnion("lora", MethodUnion("lora", "pfeiffer")), "itself a union"),
        (lambda: MethodUnion("lora", 3), "Part 1"),
        (lambda: MethodUnion.from_dict({"method": "union", "configs": ["lora", "pfeiffer"], "x": 1}), "'x'"),
        (lambda: MethodUnion.from_dict({"method": "union"}), "configs"),
        (lambda: MethodUnion("lora", "pfeifer"), "pfeiffer"),
    ],
)
def test_config_errors_name_the_problem(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_parallel_part_after_another_at_its_point_is_refused_naming_the_parts():
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=r"part 1 \(a parallel adapter\).*part 0 \(bottleneck\)"):
        model.add_adapter("u", config=MethodUnion("pfeiffer", "par_bn"))
    model.add_adapter("u", config=MethodUnion("par_bn", "pfeiffer"))  # parallel first: fine


def test_composition_and_merging_follow_the_parts():
    model = adapterhub.init(build(ENCODER))
    model.add_adapter("u", config="mam[configs=[prefix_tuning,par_bn]]")
    model.add_adapter("b", config="pfeiffer")
    with pytest.raises(ConfigError, match="Fuse cannot hold 'u'"):
        model.set_active_adapters(Fuse("u", "b"))
    with pytest.raises(ConfigError, match="prefix_tuning, parallel"):
        model.merge_adapter("u")
    model.add_adapter("l", config=MethodUnion(LoRAConfig(r=2), LoRAConfig(r=2, targets=("k", "ffn_out"))))
    perturb(union_module(model, "l"))
    inputs = make_inputs()
    model.set_active_adapters("l")
    want = hidden(model, **inputs)
    model.merge_adapter("l")
    assert torch.allclose(hidden(model, **inputs), want, atol=1e-5)
    model.unmerge_adapter()
    assert torch.allclose(hidden(model, **inputs), want, atol=1e-5)


@pytest.mark.parametrize("preset", ["mam", "unipelt"])
def test_one_training_step_changes_only_the_union(preset):
    model = adapterhub.init(build(ENCODER))
    model.add_adapter("u", config=preset)
    model.add_adapter("other", config="lora")
    model.train_adapter("u")
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".u." in f".{k}." for k in trainable)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**make_inputs()).last_hidden_state.pow(2).mean().backward()
    optimizer.step()
    changed = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    assert changed and changed <= trainable
    assert any(".parts.0." in k for k in changed) and any(".parts.1." in k for k in changed)


@pytest.mark.parametrize(("arch", "preset"), [(ENCODER, "unipelt"), ("gpt2", "mam"), ("llama", "unipelt")])
def test_save_load_round_trip(arch, preset, tmp_path):
    model = adapterhub.init(build(arch))
    model.add_adapter("u", config=preset, set_active=True)
    perturb(union_module(model, "u"))
    inputs = make_inputs()
    want = hidden(model, **inputs)
    model.save_adapter(tmp_path / "u", "u")
    other = adapterhub.init(build(arch))
    name = other.load_adapter(tmp_path / "u", set_active=True)
    assert union_module(other, name).config == union_module(model, "u").config
    assert torch.equal(hidden(other, **inputs), want)
    keys = set(union_module(other, name).state_dict())
    assert any(k.startswith("parts.0.") for k in keys) and any(k.startswith("parts.1.") for k in keys)

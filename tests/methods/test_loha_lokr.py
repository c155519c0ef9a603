"""LoHa and LoKr on tiny BERT, Llama and GPT-2: identity when new, training touches only their parameters, save/load,
merge/unmerge, composition blocks, and equality with peft's LoHa / LoKr (same weights, copied from peft) in eval and
in training with rank and module dropout (same random stream)."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Fuse, Stack
from adapterhub.errors import ConfigError
from adapterhub.methods.base import MODULE, MODULE_LAYER
from adapterhub.spec.configs import LoHaConfig, LoKrConfig, resolve_config
from method_checks import (
    ACTIVE,
    check_matches_peft_then_merged,
    check_merge,
    check_round_trip,
    check_row_blocks,
    check_training_step,
    hidden,
    make,
    make_inputs,
)
from tiny_models import build

peft = pytest.importorskip("peft", reason="peft is not installed")

ARCHS = ["bert", "llama", "gpt2"]
CONFIGS = {
    "loha": "loha[r=2,alpha=4,targets=[q,k,v,attn_out,ffn_in,ffn_out]]",
    "lokr": "lokr[r=2,alpha=4,targets=[q,k,v,attn_out,ffn_in,ffn_out]]",
    "lokr-both": "lokr[r=1,alpha=3,decompose_both=true,decompose_factor=4,targets=[q,v,ffn_out]]",
}
METHOD = {"loha": "loha", "lokr": "lokr", "lokr-both": "lokr"}


@pytest.fixture
def inputs():
    return make_inputs()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", list(CONFIGS))
def test_new_is_identity_and_perturbed_changes_outputs(arch, which, inputs):
    model = make(arch, CONFIGS[which])
    reference = build(arch)(**inputs).last_hidden_state
    assert torch.equal(hidden(model, inputs), reference)
    assert not torch.allclose(hidden(model, inputs, "a"), reference, atol=1e-4)
    fresh = adapterhub.init(build(arch))
    fresh.add_adapter("new", config=CONFIGS[which], set_active=True)
    assert torch.equal(hidden(fresh, inputs, ACTIVE), reference)  # one factor starts at zero


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", list(CONFIGS))
def test_one_training_step_changes_only_the_adapter_and_head(arch, which, inputs):
    changed = check_training_step(make(arch, CONFIGS[which]), inputs)
    prefix = "hada_" if METHOD[which] == "loha" else "lokr_"
    assert any(f".{prefix}" in n for n in changed)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", list(CONFIGS))
def test_save_load_round_trip(arch, which, inputs, tmp_path):
    check_round_trip(arch, make(arch, CONFIGS[which], names=("a",)), inputs, tmp_path, METHOD[which])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", list(CONFIGS))
def test_merge_equals_unmerged_and_unmerge_restores(arch, which, inputs):
    check_merge(make(arch, CONFIGS[which]), inputs)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("which", list(CONFIGS))
def test_composition_blocks(arch, which, inputs):
    model = make(arch, CONFIGS[which])
    check_row_blocks(model, inputs)
    # Stack: the updates add on the projection's output
    a = hidden(model, inputs, "a")
    b = hidden(model, inputs, "b")
    stacked = hidden(model, inputs, Stack("a", "b"))
    assert not torch.allclose(stacked, a, atol=1e-4) and not torch.allclose(stacked, b, atol=1e-4)
    model.add_adapter("fresh", config=CONFIGS[which])
    torch.testing.assert_close(hidden(model, inputs, Stack("a", "fresh")), a, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match=r"Fuse"):
        model.set_active_adapters(Fuse("a", "b"))


def test_grouped_batch_split_equals_row_blocks_one_by_one(inputs):
    model = make("llama", CONFIGS["lokr"], names=("a", "b", "c"))
    module = model._adapterhub.adapters["a"]
    others = [model._adapterhub.adapters[n] for n in "bc"]
    from adapterhub.methods.base import LinearInputs

    x, y = torch.randn(3, 5, 32), torch.randn(3, 5, 32)
    for sizes in ([1, 1, 1], [2, 0, 1]):
        grouped = module.batch_split_grouped([module, *others], 0, ("linear", "q"), LinearInputs(x, y), sizes)
        rows, start = [], 0
        for adapter, size in zip([module, *others], sizes, strict=True):
            site = adapter.layer_at(0, "q")
            rows.append(site.add_to(y[start : start + size], x[start : start + size]))
            start += size
        torch.testing.assert_close(grouped, torch.cat(rows), atol=1e-6, rtol=0)


def test_parameter_counts():
    model = adapterhub.init(build("bert"))  # hidden 32, ffn 37
    model.add_adapter("h", config="loha[r=2,targets=[q,ffn_in]]")
    assert model.adapter_summary()["h"].parameters == 2 * (2 * 2 * (32 + 32) + 2 * 2 * (32 + 37))
    # LoKr on q (32 -> 32 = (4·8) x (4·8)), r=2 < 8/2: W1 full (4, 4), W2 = (8, 2)(2, 8)
    model.add_adapter("k", config="lokr[r=2,targets=[q]]")
    assert model.adapter_summary()["k"].parameters == 2 * (4 * 4 + 8 * 2 + 2 * 8)


def test_config_errors_name_the_valid_keys_and_values():
    with pytest.raises(ConfigError, match=r"Unknown key.*'dropout'.*rank_dropout"):
        resolve_config({"method": "loha", "dropout": 0.1})
    with pytest.raises(ConfigError, match=r"init_weights must be one of True, False, 'lycoris'"):
        LoKrConfig(init_weights="gaussian")
    with pytest.raises(ConfigError, match=r"init_weights must be one of True, False"):
        LoHaConfig(init_weights="lycoris")
    with pytest.raises(ConfigError, match=r"decompose_factor"):
        LoKrConfig(decompose_factor=0)
    with pytest.raises(ConfigError, match=r"module_dropout must be a number in \[0, 1\)"):
        LoHaConfig(module_dropout=1.0)
    with pytest.raises(ConfigError, match=r"both choose where LoKr sits"):
        LoKrConfig(targets=("q",), target_modules=("query",))
    assert LoKrConfig.from_dict(LoKrConfig(r=3, target_modules="all-linear").to_dict()) == LoKrConfig(
        r=3, target_modules="all-linear"
    )


def test_lycoris_refuses_conv_and_embedding_targets():
    model = adapterhub.init(build("bert"))
    with pytest.raises(ConfigError, match=r"loha on nn.Embedding is not supported"):
        model.add_adapter("e", config={"method": "loha", "target_modules": ["word_embeddings"]})


# ------------------------------------------------------------------------------------------------ peft parity


def _peft_config(which: str, **options):
    common = {"r": 2, "alpha": 4, "target_modules": ["query", "value", "q_proj", "down_proj", "dense"]}
    common.update(options)
    if which == "loha":
        return peft.LoHaConfig(**common)
    return peft.LoKrConfig(**common)


def copy_from_peft(theirs, ours, name: str = "x", seed: int = 7) -> int:
    """Perturb peft's factors and copy them into adapter ``name`` of ``ours`` (targeted by module name); returns
    how many modules were copied."""
    mine = ours._adapterhub.adapters[name]
    own = {path: key for key, path in mine.module_paths().items()}
    generator = torch.Generator().manual_seed(seed)
    copied = 0
    with torch.no_grad():
        for module_name, module in theirs.named_modules():
            if not hasattr(module, "hada_w1_a") and not hasattr(module, "lokr_w1_a"):
                continue
            path = module_name.removeprefix("base_model.model.")
            layer, point = own[path]
            site = mine.layer_at(layer, (MODULE, path) if layer == MODULE_LAYER else point)
            for param_name, param in site.named_parameters():
                source = getattr(module, param_name)["default"]
                assert source.shape == param.shape, (path, param_name)
                source.copy_(torch.randn(source.shape, generator=generator) * 0.3)
                param.copy_(source)
            assert site.scaling == pytest.approx(module.scaling["default"])
            copied += 1
    return copied


def _ours_like(arch: str, kind: str, which: str, **options):
    model = adapterhub.init(build(arch, kind))
    targets = ["query", "value", "q_proj", "down_proj", "dense"]
    model.add_adapter(
        "x", config={"method": METHOD[which], "r": 2, "alpha": 4, "target_modules": targets, **options}
    )
    model.set_active_adapters("x")
    return model


@pytest.mark.parametrize(
    ("which", "options"),
    [
        ("loha", {}),
        ("lokr", {}),
        ("lokr", {"decompose_both": True, "decompose_factor": 4}),
        ("lokr", {"init_weights": "lycoris"}),
        ("loha", {"rank_pattern": {"value|q_proj": 3}, "alpha_pattern": {"dense|down_proj": 5}}),
    ],
)
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_matches_peft_then_merged(arch, which, options):
    theirs = peft.get_peft_model(build(arch), _peft_config(which, **options)).eval()
    ours = _ours_like(arch, "base", which, **options).eval()
    assert copy_from_peft(theirs, ours) > 0
    assert sum(p.numel() for n, p in theirs.named_parameters() if "_w" in n and ".default" in n) == (
        ours.adapter_summary()["x"].parameters
    )
    inputs = make_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).last_hidden_state
        torch.testing.assert_close(ours(**inputs).last_hidden_state, expected, atol=1e-5, rtol=0)
        ours.merge_adapter("x")
        torch.testing.assert_close(ours(**inputs).last_hidden_state, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("which", ["loha", "lokr"])
def test_matches_peft_classifier_with_spec_point_targets(which):
    theirs = peft.get_peft_model(
        build("bert", "classification"),
        _peft_config(which, target_modules=["query", "value"], task_type="SEQ_CLS"),
    ).eval()
    ours = adapterhub.init(build("bert", "classification"))
    ours.add_adapter("x", config=f"{which}[r=2,alpha=4,targets=[q,v]]", set_active=True)
    ours.eval()
    mine = ours._adapterhub.adapters["x"]
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, module in theirs.named_modules():
            if hasattr(module, "hada_w1_a") or hasattr(module, "lokr_w1"):
                layer = int(name.split("layer.")[1].split(".")[0])
                site = mine.layer_at(layer, "q" if name.endswith("query") else "v")
                for param_name, param in site.named_parameters():
                    source = getattr(module, param_name)["default"]
                    source.copy_(torch.randn(source.shape, generator=generator) * 0.3)
                    param.copy_(source)
    check_matches_peft_then_merged(ours, theirs)


@pytest.mark.parametrize(
    ("which", "options"),
    [
        ("loha", {"rank_dropout": 0.5, "module_dropout": 0.3}),
        ("lokr", {"rank_dropout": 0.5, "module_dropout": 0.3}),
        ("lokr", {"rank_dropout": 0.5, "rank_dropout_scale": True}),
    ],
)
def test_training_dropouts_match_peft_on_the_same_random_stream(which, options):
    theirs = peft.get_peft_model(build("llama"), _peft_config(which, **options))
    ours = _ours_like("llama", "base", which, **options)
    copy_from_peft(theirs, ours)
    theirs.train()
    ours.train()
    inputs = make_inputs()
    outputs = []
    for model in (theirs, ours):
        torch.manual_seed(11)
        with torch.no_grad():
            outputs.append(torch.stack([model(**inputs).last_hidden_state for _ in range(3)]))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=0)
    ours.eval()
    with torch.no_grad():  # dropout off: not what training gave
        assert not torch.allclose(ours(**inputs).last_hidden_state, outputs[1][0], atol=1e-4)


@pytest.mark.parametrize("which", ["loha", "lokr"])
def test_average_adapter_is_the_weighted_sum_of_parameters(which):
    model = make("bert", CONFIGS[which])
    made = model.average_adapter("avg", ["a", "b"], weights=[0.25, 0.75])
    a, b = (model._adapterhub.adapters[n].state_dict() for n in "ab")
    for key, value in made.state_dict().items():
        torch.testing.assert_close(value, 0.25 * a[key] + 0.75 * b[key])

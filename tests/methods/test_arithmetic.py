"""average_adapter against peft's add_weighted_adapter on the same LoRA adapters and settings (real peft, a
``dev`` extra), plus the generic weighted sum for other methods and the errors."""

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from tiny_models import build, make_inputs, perturb

peft = pytest.importorskip(
    "peft", reason="peft is not installed (pip install -e '.[dev]' -c constraints.txt)"
)

ARCH = {
    "bert": ("base", ["query", "value", "intermediate.dense"]),
    "llama": ("base", ["q_proj", "v_proj", "up_proj", "gate_proj"]),
    "gpt2": ("base", ["c_attn", "mlp.c_proj"]),
}


def _hidden(model, inputs):
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def _pair(tmp_path, arch, ranks=(4, 4), rslora=(False, True)):
    """Two perturbed peft LoRA adapters 'a' and 'b' on one peft model, and the same two loaded into ours."""
    kind, modules = ARCH[arch]
    theirs = None
    for name, r, rs, alpha in zip("ab", ranks, rslora, (8, 6), strict=True):
        config = peft.LoraConfig(
            r=r, lora_alpha=alpha, target_modules=modules[: 3 if name == "a" else 4], use_rslora=rs
        )
        if theirs is None:
            theirs = peft.get_peft_model(build(arch, kind), config, adapter_name=name)
        else:
            theirs.add_adapter(name, config)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for key, param in theirs.named_parameters():
            if "lora_" in key:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    ours = adapterhub.init(build(arch, kind))
    for name in "ab":
        theirs.save_pretrained(tmp_path, selected_adapters=[name])
        path = tmp_path / name if name != "default" and (tmp_path / name).exists() else tmp_path
        ours.load_adapter(path, load_as=name)
    return theirs.eval(), ours.eval()


@pytest.mark.parametrize(
    ("combine", "density"),
    [
        ("linear", None),
        ("svd", None),
        ("cat", None),
        ("ties", 0.5),
        ("dare_linear", 0.6),
        ("dare_ties", 0.6),
        ("magnitude_prune", 0.5),
        ("ties_svd", 0.5),
        ("dare_ties_svd", 0.7),
    ],
)
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_lora_combinations_equal_peft(tmp_path, arch, combine, density):
    theirs, ours = _pair(tmp_path, arch)
    weights = [0.7, -0.4]
    options = {"density": density} if density is not None else {}
    inject = theirs.base_model.inject_adapter

    def inject_then_seed(*args, **kwargs):  # peft initialises the new LoRA (drawing random numbers) first
        inject(*args, **kwargs)
        torch.manual_seed(1234)  # then DARE draws its masks: from here on the same stream as ours

    theirs.base_model.inject_adapter = inject_then_seed
    theirs.add_weighted_adapter(["a", "b"], weights, "m", combination_type=combine, **options)
    theirs.set_adapter("m")
    ours.average_adapter("m", ["a", "b"], weights, combine=combine, seed=1234, set_active=True, **options)
    inputs = make_inputs()
    expected, got = _hidden(theirs, inputs), _hidden(ours, inputs)
    theirs.set_adapter("a")
    assert (expected - _hidden(theirs, inputs)).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("combine", ["linear", "cat"])
def test_gpt2_fused_c_attn_linear_and_cat_equal_peft(tmp_path, combine):
    theirs, ours = _pair(tmp_path, "gpt2")
    theirs.add_weighted_adapter(["a", "b"], [0.6, 0.3], "m", combination_type=combine)
    theirs.set_adapter("m")
    ours.average_adapter("m", ["a", "b"], [0.6, 0.3], combine=combine, set_active=True)
    torch.testing.assert_close(
        _hidden(ours, make_inputs()), _hidden(theirs, make_inputs()), atol=1e-4, rtol=0
    )


def test_svd_rank_and_rank_mismatch(tmp_path):
    theirs, ours = _pair(tmp_path, "bert", ranks=(4, 6))
    theirs.add_weighted_adapter(["a", "b"], [0.5, 0.5], "m", combination_type="svd", svd_rank=3)
    theirs.set_adapter("m")
    module = ours.average_adapter("m", ["a", "b"], [0.5, 0.5], combine="svd", svd_rank=3, set_active=True)
    assert module.config.r == 3
    torch.testing.assert_close(
        _hidden(ours, make_inputs()), _hidden(theirs, make_inputs()), atol=1e-4, rtol=0
    )
    with pytest.raises(ConfigError, match=r"equal ranks; a: r=4, b: r=6"):
        ours.average_adapter("n", ["a", "b"], [0.5, 0.5], combine="linear")


def test_other_methods_sum_parameters_and_heads():
    model = adapterhub.init(build("bert"))
    for i, name in enumerate("ab"):
        model.add_adapter(name, config="pfeiffer")
        perturb(model._adapterhub.adapters[name], seed=i)
        model.add_classification_head(name, num_labels=3)
        perturb(model.heads[name], seed=10 + i)
    model.average_adapter("m", ["a", "b"], [0.25, 0.75])
    state = {n: dict(model._adapterhub.adapters[n].state_dict()) for n in "abm"}
    for key, value in state["m"].items():
        torch.testing.assert_close(value, 0.25 * state["a"][key] + 0.75 * state["b"][key])
    heads = {n: dict(model.heads[n].state_dict()) for n in "abm"}
    for key, value in heads["m"].items():
        torch.testing.assert_close(value, 0.25 * heads["a"][key] + 0.75 * heads["b"][key])

    model.add_adapter("c", config="houlsby")
    with pytest.raises(ConfigError, match=r"\['c'\] differ from 'a'"):
        model.average_adapter("x", ["a", "c"])
    with pytest.raises(ConfigError, match="defined for LoRA"):
        model.average_adapter("x", ["a", "b"], combine="ties", density=0.5)
    model.add_adapter("l", config="lora")
    with pytest.raises(ConfigError, match="a: bottleneck, l: lora"):
        model.average_adapter("x", ["a", "l"])
    with pytest.raises(ConfigError, match="needs density"):
        model.average_adapter("x", ["l", "l"], combine="dare_ties")

"""DoRA on every supported architecture: identity when added, training touches only its parameters, round trip,
merge/unmerge, composition blocks, and equality with peft's DoRA on a tiny BERT."""

from __future__ import annotations

import re

import pytest
import torch

import adapterhub
from adapterhub import Fuse, Stack
from adapterhub.errors import ConfigError
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
from tiny_models import QKV_ARCHITECTURES, build

CONFIG = "dora[r=4,alpha=8,targets=[q,k,v,attn_out,ffn_in,ffn_out]]"


@pytest.fixture
def inputs():
    return make_inputs()


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_inactive_and_new_are_identity_active_changes_outputs(arch, inputs):
    model = make(arch, CONFIG)
    reference = build(arch)(**inputs).last_hidden_state
    assert torch.equal(hidden(model, inputs), reference)
    assert not torch.allclose(hidden(model, inputs, "a"), reference, atol=1e-4)
    fresh = adapterhub.init(build(arch))
    fresh.add_adapter("new", config=CONFIG, set_active=True)  # B = 0, m = ‖W‖
    torch.testing.assert_close(hidden(fresh, inputs, ACTIVE), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_one_training_step_changes_only_dora_and_head(arch, inputs):
    changed = check_training_step(make(arch, CONFIG), inputs)
    assert any(".magnitude" in n for n in changed) and any(".lora_B" in n for n in changed)


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_save_load_round_trip(arch, inputs, tmp_path):
    check_round_trip(arch, make(arch, CONFIG, names=("a",)), inputs, tmp_path, "dora")


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_merge_and_unmerge(arch, inputs):
    check_merge(make(arch, CONFIG), inputs)


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_composition_blocks(arch, inputs):
    model = make(arch, CONFIG)
    check_row_blocks(model, inputs)
    # Stack: the updates add, each from the point's base value; a fresh (identity) adapter adds nothing
    model.add_adapter("fresh", config=CONFIG)
    torch.testing.assert_close(
        hidden(model, inputs, Stack("a", "fresh")), hidden(model, inputs, "a"), atol=1e-5, rtol=0
    )
    stacked = hidden(model, inputs, Stack("a", "b"))
    assert not torch.allclose(stacked, hidden(model, inputs, "a"), atol=1e-4)
    with pytest.raises(ConfigError, match=r"Fuse.*dora"):
        model.set_active_adapters(Fuse("a", "b"))


# ------------------------------------------------------------------------------------------------ peft

SITE = re.compile(r"layer\.(\d+)\.attention\.self\.(query|value)$")
POINT = {"query": "q", "value": "v"}


def _peft_dora(r=4, alpha=8):
    peft = pytest.importorskip("peft", reason="peft is not installed")
    config = peft.LoraConfig(
        task_type="SEQ_CLS", r=r, lora_alpha=alpha, target_modules=["query", "value"], use_dora=True
    )
    return peft, config


def test_dora_matches_peft_on_tiny_bert_classifier():
    peft, config = _peft_dora()
    theirs = peft.get_peft_model(build("bert", "classification"), config).eval()
    ours = adapterhub.init(build("bert", "classification"))
    ours.add_adapter("x", config="dora[r=4,alpha=8,targets=[q,v]]", set_active=True)
    ours.eval()
    mine = ours._adapterhub.adapters["x"]
    generator = torch.Generator().manual_seed(7)
    sites = {
        (int(m.group(1)), POINT[m.group(2)]): module
        for name, module in theirs.named_modules()
        if (m := SITE.search(name)) and hasattr(module, "lora_A")
    }
    assert len(sites) == 4
    with torch.no_grad():
        for (layer, point), site in sites.items():
            own = mine.layer_at(layer, point)
            magnitude = site.lora_magnitude_vector["default"].weight
            torch.testing.assert_close(own.magnitude, magnitude, atol=1e-6, rtol=0)  # both ‖W‖ per row
            for theirs_param in (site.lora_A["default"].weight, site.lora_B["default"].weight, magnitude):
                theirs_param.add_(torch.randn(theirs_param.shape, generator=generator) * 0.3)
            own.lora_A.copy_(site.lora_A["default"].weight)
            own.lora_B.copy_(site.lora_B["default"].weight)
            own.magnitude.copy_(magnitude)
    check_matches_peft_then_merged(ours, theirs)


def test_parameter_count_matches_peft():
    peft, config = _peft_dora()
    theirs = peft.get_peft_model(build("bert"), config)
    count = sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    ours = adapterhub.init(build("bert"))
    ours.add_adapter("x", config="dora[r=4,alpha=8,targets=[q,v]]")
    assert ours.adapter_summary()["x"].parameters == count


@pytest.mark.parametrize(
    ("config", "needs"),
    [("dora[targets=[ffn_out]]", "DoRA"), ("ia3[targets=[],input_targets=[ffn_out]]", r"\(IA\)³")],
)
def test_methods_reading_the_base_weight_refuse_inputs_built_without_it(config, needs):
    # the hooks always pass the weight; a caller building LinearInputs by hand gets told what is missing
    from adapterhub.methods.base import LinearInputs

    model = make("bert", config, names=("x",))
    module = model._adapterhub.adapters["x"]
    x, y = torch.randn(2, 3, 37), torch.randn(2, 3, 32)
    inputs = LinearInputs(x, y)
    with pytest.raises(ConfigError, match=rf"{needs}.*weight=") as error:
        module.stack_step(0, ("linear", "ffn_out"), inputs.start(), inputs)
    assert "LinearInputs" in str(error.value)

"""(IA)³ on every supported architecture: identity when inactive, training touches only its vectors, round trip,
merge/unmerge, composition blocks, and equality with peft's IA3 on a tiny BERT."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Fuse, Split, Stack
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
    perturb,
)
from tiny_models import QKV_ARCHITECTURES, build

CONFIGS = {
    "paper": "ia3",  # k, v outputs; ffn_out input
    "both_sides": "ia3[targets=[q,k,v,ffn_in,ffn_out],input_targets=[ffn_out,attn_out]]",
}


@pytest.fixture
def inputs():
    return make_inputs()


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_inactive_is_bit_identical_and_active_changes_outputs(arch, inputs):
    model = make(arch, CONFIGS["paper"])
    reference = build(arch)(**inputs).last_hidden_state
    assert torch.equal(hidden(model, inputs), reference)
    assert not torch.allclose(hidden(model, inputs, "a"), reference, atol=1e-4)
    fresh = adapterhub.init(build(arch))
    fresh.add_adapter("new", config="ia3", set_active=True)  # vectors of ones: exactly the identity
    assert torch.equal(hidden(fresh, inputs, ACTIVE), reference)


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_one_training_step_changes_only_ia3_and_head(arch, inputs):
    changed = check_training_step(make(arch, CONFIGS["paper"]), inputs)
    # (keys move the attention of the tiny random models too little to show after one step)
    assert any(".out_v" in n for n in changed) and any(".in_ffn_out" in n for n in changed)


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_save_load_round_trip(arch, inputs, tmp_path):
    check_round_trip(arch, make(arch, CONFIGS["both_sides"], names=("a",)), inputs, tmp_path, "ia3")


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_merge_and_unmerge(arch, config, inputs):
    check_merge(make(arch, CONFIGS[config]), inputs)


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_composition_blocks(arch, inputs):
    model = make(arch, CONFIGS["both_sides"])
    check_row_blocks(model, inputs)
    # Stack multiplies the scalings: equal to a merged into the weights with b on top
    stacked = hidden(model, inputs, Stack("a", "b"))
    assert not torch.allclose(stacked, hidden(model, inputs, "a"), atol=1e-4)
    model.set_active_adapters(Stack("a", "b"))
    model.merge_adapter("a")
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), stacked, atol=1e-5, rtol=0)
    model.merge_adapter("b")
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), stacked, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    model.set_active_adapters(None)
    with pytest.raises(ConfigError, match=r"Fuse.*ia3"):
        model.set_active_adapters(Fuse("a", "b"))


@pytest.mark.parametrize("arch", QKV_ARCHITECTURES)
def test_stack_scalings_survive_other_steps_and_reach_a_final_block(arch, inputs):
    # input-only vectors: a LoRA update on the same projection commutes with them (it sees the unscaled input)
    model = make(arch, "ia3[targets=[],input_targets=[ffn_out]]")
    model.add_adapter("l", config="lora[targets=[ffn_out]]")
    perturb(model._adapterhub.adapters["l"], seed=3)
    around = hidden(model, inputs, Stack("a", "l", "b"))  # b's step comes after LoRA's
    ending = hidden(model, inputs, Stack("a", Split("b", "l", split_index=3)))  # a's scaling, then b on 0..2
    # reference: a (and b) folded into the weights, where no running value has to carry them
    model.set_active_adapters(Stack("a", Split("b", "l", split_index=3)))
    model.merge_adapter("a")
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), ending, atol=1e-5, rtol=0)
    model.unmerge_adapter()
    model.set_active_adapters(Stack("a", "l", "b"))
    model.merge_adapter("a")
    model.merge_adapter("b")
    torch.testing.assert_close(hidden(model, inputs, ACTIVE), around, atol=1e-5, rtol=0)


def test_config_errors_and_presets():
    assert adapterhub.resolve_config("ia3").to_dict() == {
        "method": "ia3",
        "targets": ["k", "v"],
        "input_targets": ["ffn_out"],
        "leave_out": [],
    }
    with pytest.raises(ConfigError, match="projection"):
        adapterhub.resolve_config("ia3[targets=[query]]")


# ------------------------------------------------------------------------------------------------ peft

TARGETS = r".*layer\.\d+\.(attention\.self\.(key|value)|output\.dense)$"
FEEDFORWARD = r".*layer\.\d+\.output\.dense$"


def _peft_ia3():
    peft = pytest.importorskip("peft", reason="peft is not installed")
    return peft, peft.IA3Config(task_type="SEQ_CLS", target_modules=TARGETS, feedforward_modules=FEEDFORWARD)


def test_ia3_matches_peft_on_tiny_bert_classifier():
    peft, config = _peft_ia3()
    theirs = peft.get_peft_model(build("bert", "classification"), config).eval()
    ours = adapterhub.init(build("bert", "classification"))
    ours.add_adapter("x", config="ia3", set_active=True)
    ours.eval()
    mine = ours._adapterhub.adapters["x"]
    generator = torch.Generator().manual_seed(7)
    names = {"attention.self.key": "out_k", "attention.self.value": "out_v", "output.dense": "in_ffn_out"}
    copied = 0
    with torch.no_grad():
        for name, module in theirs.named_modules():
            if not hasattr(module, "ia3_l") or "default" not in getattr(module, "ia3_l", {}):
                continue
            layer = int(name.split("layer.")[1].split(".")[0])
            suffix = name.split(f"layer.{layer}.")[1]
            vector = module.ia3_l["default"]
            vector.add_(torch.randn(vector.shape, generator=generator) * 0.3)
            mine.layers[str(layer)][names[suffix]].copy_(vector.view(-1))
            copied += 1
        assert copied == 2 * 3
    check_matches_peft_then_merged(ours, theirs)


def test_parameter_count_matches_peft():
    peft, config = _peft_ia3()
    theirs = peft.get_peft_model(build("bert"), config)
    count = sum(p.numel() for n, p in theirs.named_parameters() if "ia3_l" in n)
    ours = adapterhub.init(build("bert"))
    ours.add_adapter("x", config="ia3")
    assert ours.adapter_summary()["x"].parameters == count

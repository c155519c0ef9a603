"""Adapters the `adapters` library (1.3.0, transformers 4.57) saved for ViT load into ours (transformers 5) with
identical outputs, and what we write in that library's layout has its key names and tensors.

ViT's modules were renamed in transformers 5 (``encoder.layer.<i>.attention.attention.query`` ->
``layers.<i>.attention.q_proj``, ``intermediate.dense`` -> ``mlp.fc1``, ...): the spec's ``adapters_lib_linears``
and ``adapters_lib_sites`` map that library's names. The fixtures (base model saved by transformers 4.57, the
adapter, the outputs that library computed) were written by scripts/compat/make_adapters_vision_fixtures.py in the
separate virtual environment with that library; see docs/compat.md. The other direction (that library loads what
we write, in .venv-adapters) is skipped with a reason when that environment is absent."""

from __future__ import annotations

import json

import pytest
import torch

from adapterhub.errors import ConfigError
from golden import (
    FIXTURES,
    check_library_reproduces_ours,
    check_written_keys_and_read_back,
    load_inputs_case,
    needs_adapters_venv,
    run_in_adapters_venv,
)
from tiny_models import perturb

VIT = ["vit_seq_bn", "vit_double_seq_bn", "vit_lora_qkv_ffn"]


def load_case(case: str):
    return load_inputs_case(case)


def vit_outputs(model, inputs) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {"last_hidden_state": model(**inputs).last_hidden_state}


@pytest.mark.parametrize("case", VIT)
def test_vit_adapters_saved_by_that_library_give_its_outputs(case):
    model, inputs, expected = load_case(case)
    with torch.no_grad():
        plain = model(**inputs).last_hidden_state
    torch.testing.assert_close(
        plain, torch.tensor(expected["last_hidden_state_without_adapter"]), atol=1e-5, rtol=0
    )
    name = model.load_adapter(FIXTURES / case / "adapter", set_active=True)
    assert name == expected["adapter_name"]
    with torch.no_grad():
        ours = model(**inputs).last_hidden_state
    torch.testing.assert_close(ours, torch.tensor(expected["last_hidden_state"]), atol=1e-5, rtol=0)
    assert not torch.allclose(ours, plain, atol=1e-2)


@pytest.mark.parametrize("case", VIT)
def test_vit_written_in_their_layout_has_their_keys_and_reads_back(case, tmp_path):
    # we write for their ViTAdapterModel (its body under ``vit.``); the fixture was saved from a plain ViTModel
    config = check_written_keys_and_read_back(load_case, vit_outputs, case, tmp_path / "theirs", "vit.")
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    for key in ("architecture", "reduction_factor", "r", "alpha", "attn_matrices", "output_lora"):
        assert config.get(key) == expected["config"].get(key), key


THEIR_VIT_LOAD = """
import json, sys, torch, adapters, transformers
fixture, directory, outputs = sys.argv[1:]
inputs = json.loads(open(fixture + "/expected.json").read())["inputs"]
model = transformers.ViTModel.from_pretrained(fixture + "/base", add_pooling_layer=False).eval()
adapters.init(model)
model.set_active_adapters(model.load_adapter(directory))
with torch.no_grad():
    out = model(pixel_values=torch.tensor(inputs["pixel_values"])).last_hidden_state
diff = (out - torch.tensor(json.loads(open(outputs).read()))).abs().max().item()
print(diff)
sys.exit(0 if diff < 1e-5 else 1)
"""


@needs_adapters_venv
@pytest.mark.parametrize("config", ["houlsby[reduction_factor=4]", "lora[targets=[q,k,v,ffn_in,ffn_out]]"])
def test_that_library_loads_our_vit_adapters_with_our_outputs(config, tmp_path):
    """The other direction: their ViT (transformers 4.57 names) loads what we write and reproduces our outputs."""
    model, inputs, _ = load_case("vit_seq_bn")
    model.add_adapter("ours", config=config, set_active=True)
    perturb(model._adapterhub.adapters["ours"], std=0.2)
    with torch.no_grad():
        ours = model(**inputs).last_hidden_state
    model.save_adapter(tmp_path / "adapter", "ours", layout="adapters", with_head=False)
    (tmp_path / "ours.json").write_text(json.dumps(ours.tolist()))
    run_in_adapters_venv(
        THEIR_VIT_LOAD, str(FIXTURES / "vit_seq_bn"), str(tmp_path / "adapter"), str(tmp_path / "ours.json")
    )


# ------------------------------------------------------------------------------------------------ CLIPModel

CLIP = ["clip_seq_bn", "clip_lora_qkv_ffn"]
CLIP_OUTPUTS = ("text_embeds", "image_embeds", "logits_per_image")


def clip_outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return {key: getattr(out, key) for key in CLIP_OUTPUTS}


@pytest.mark.parametrize("case", CLIP)
def test_clip_adapters_saved_by_that_library_give_its_outputs_on_both_towers(case):
    """Their CLIPModel numbers text layers, then vision layers, but names each tower's weights by its own path and
    local index (vision_model.encoder.layers.0 is layer 2)."""
    model, inputs, expected = load_case(case)
    plain = clip_outputs(model, inputs)
    model.load_adapter(FIXTURES / case / "adapter", set_active=True)
    ours = clip_outputs(model, inputs)
    for key in CLIP_OUTPUTS:
        torch.testing.assert_close(
            plain[key], torch.tensor(expected[f"{key}_without_adapter"]), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(ours[key], torch.tensor(expected[key]), atol=1e-5, rtol=0)
    for key in ("text_embeds", "image_embeds"):  # both towers carry the adapter
        assert not torch.allclose(ours[key], plain[key], atol=1e-2)


@pytest.mark.parametrize("case", CLIP)
def test_clip_written_in_their_layout_has_their_keys_and_reads_back(case, tmp_path):
    # we write for their CLIPAdapterModel (its body under ``clip.``); the fixture was saved from a plain CLIPModel
    check_written_keys_and_read_back(load_case, clip_outputs, case, tmp_path / "theirs", "clip.")


def test_clip_methods_that_layout_cannot_carry_on_two_stacks_are_refused_by_name(tmp_path):
    model, _, _ = load_case("clip_seq_bn")
    model.add_adapter("p", config="prefix_tuning")
    with pytest.raises(ConfigError, match="bottleneck adapters and LoRA only, not 'prefix_tuning'"):
        model.save_adapter(tmp_path / "p", "p", layout="adapters")


@needs_adapters_venv
@pytest.mark.parametrize("config", ["houlsby[reduction_factor=4]", "lora[targets=[q,k,v,ffn_in,ffn_out]]"])
def test_that_library_loads_our_clip_adapters_with_our_outputs(config, tmp_path):
    model, inputs, _ = load_case("clip_seq_bn")
    model.add_adapter("ours", config=config, set_active=True)
    perturb(model._adapterhub.adapters["ours"], std=0.2)
    ours = clip_outputs(model, inputs)
    check_library_reproduces_ours(model, "ours", "clip_seq_bn", tmp_path, ours, "CLIPModel")

"""The two-tower ``CLIPModel`` carries the adapter methods on both towers: the method x CLIPModel matrix (inactive
adapters leave the model bit-identical, active ones change both the text and the image embeddings, training
changes only the adapter, save/load round trips), the layer numbering (text layers first, then vision, as the
`adapters` library numbers them), merging, Stack and Fuse, and the refusals: prompt tuning and Parallel by name.
Towers of different widths: tests/architectures/test_clip_widths.py."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Fuse, Parallel, Stack
from adapterhub.errors import ConfigError
from tiny_models import build_clip, clip_with_adapters, make_clip_inputs
from tiny_models import clip_outputs as outputs

# config string -> the method name its saved manifest records
METHODS = {
    "pfeiffer": "bottleneck",
    "houlsby": "bottleneck",
    "parallel": "parallel",
    "compacter[reduction_factor=4]": "compacter",
    "lora[targets=[q,k,v,attn_out,ffn_in,ffn_out]]": "lora",
    "dora": "dora",
    "ia3": "ia3",
    "prefix_tuning[prefix_length=3]": "prefix_tuning",
    "mam": "union",
    "unipelt": "union",
    "pfeiffer+inv": "bottleneck_inv",
}
MERGEABLE = ["lora[targets=[q,k,v,attn_out,ffn_in,ffn_out]]", "dora", "ia3"]


@pytest.fixture
def inputs():
    return make_clip_inputs()


def make(config: str, names=("a",)):
    return clip_with_adapters(config, names)


def test_clip_model_numbers_text_layers_first_then_vision():
    model = adapterhub.init(build_clip())
    dims = model.model_dims()
    assert (dims.num_layers, dims.decoder_start, dims.hidden_size, dims.num_heads) == (4, 2, 32, 4)
    assert dims.decoder_points == ()  # both towers have the same points


@pytest.mark.parametrize("config", METHODS)
def test_inactive_is_bit_identical_and_active_changes_both_towers(config, inputs):
    reference = build_clip()(**inputs)
    model = make(config)
    text, image, logits = outputs(model, inputs)
    assert torch.equal(text, reference.text_embeds) and torch.equal(image, reference.image_embeds)
    assert torch.equal(logits, reference.logits_per_image)
    text_a, image_a, _ = outputs(model, inputs, "a")
    assert not torch.allclose(text_a, text, atol=1e-4)
    assert not torch.allclose(image_a, image, atol=1e-4)


@pytest.mark.parametrize(("leave_out", "changed"), [("[0,1]", "image"), ("[2,3]", "text")])
def test_leaving_out_one_towers_layers_adapts_only_the_other(leave_out, changed, inputs):
    model = make(f"pfeiffer[leave_out={leave_out}]")
    text, image, _ = outputs(model, inputs)
    text_a, image_a, _ = outputs(model, inputs, "a")
    assert torch.equal(text_a, text) == (changed == "image")
    assert torch.equal(image_a, image) == (changed == "text")


@pytest.mark.parametrize("config", METHODS)
def test_training_on_the_contrastive_loss_changes_only_the_adapter(config, inputs):
    model = make(config)
    model.train_adapter("a")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**inputs, return_loss=True).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("_adapterhub.adapters.a.") for n in changed)


def test_lora_gradients_reach_both_towers(inputs):
    model = make("lora[targets=[q,v]]")
    model.train_adapter("a")
    model(**inputs, return_loss=True).loss.backward()
    graded = {
        int(n.split(".")[1])
        for n, p in model._adapterhub.adapters["a"].named_parameters()
        if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert graded == {0, 1, 2, 3}


@pytest.mark.parametrize("config", METHODS)
def test_save_and_load_round_trip(config, inputs, tmp_path):
    model = make(config)
    expected = outputs(model, inputs, "a")
    model.save_adapter(tmp_path / "a", "a")
    fresh = adapterhub.init(build_clip())
    fresh.load_adapter(tmp_path / "a", set_active=True)
    for got, want in zip(outputs(fresh, inputs, "a"), expected, strict=True):
        assert torch.equal(got, want)
    from adapterhub.io.manifest import inspect_adapter_dir

    manifest = inspect_adapter_dir(tmp_path / "a")
    assert manifest.method == METHODS[config]
    assert manifest.num_parameters == model.adapter_summary()["a"].parameters


@pytest.mark.parametrize("config", MERGEABLE)
def test_merged_equals_unmerged_and_unmerge_restores(config, inputs):
    model = make(config)
    reference = outputs(model, inputs)
    unmerged = outputs(model, inputs, "a")
    model.set_active_adapters("a")
    model.merge_adapter("a")
    with torch.no_grad():
        merged = model(**inputs)
    torch.testing.assert_close(merged.text_embeds, unmerged[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged.image_embeds, unmerged[1], atol=1e-5, rtol=1e-5)
    model.unmerge_adapter()
    model.set_active_adapters(None)
    for got, want in zip(outputs(model, inputs), reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_stack_and_fusion_compose_on_both_towers(inputs):
    model = make("pfeiffer", names=("a", "b"))
    single = outputs(model, inputs, "a")
    stacked = outputs(model, inputs, Stack("a", "b"))
    assert not torch.allclose(stacked[0], single[0], atol=1e-4)
    assert not torch.allclose(stacked[1], single[1], atol=1e-4)
    model.add_adapter_fusion(Fuse("a", "b"))
    fused = outputs(model, inputs, Fuse("a", "b"))
    for tower in (0, 1):  # text, image
        assert torch.isfinite(fused[tower]).all()
        assert not torch.allclose(fused[tower], single[tower], atol=1e-4)
        assert not torch.allclose(fused[tower], outputs(model, inputs, "b")[tower], atol=1e-4)


def test_prompt_tuning_is_refused_by_name():
    model = adapterhub.init(build_clip())
    with pytest.raises(
        ConfigError, match=r"prompt_tuning adapters cannot attach to this clip model.*end-of-text position"
    ):
        model.add_adapter("p", config="prompt_tuning[prompt_length=3]")
    assert "p" not in model.adapters


def test_parallel_is_refused_on_the_two_towers(inputs):
    model = make("pfeiffer", names=("a", "b"))
    with pytest.raises(ConfigError, match=r"Parallel is not supported.*CLIP's text and vision towers"):
        model.set_active_adapters(Parallel("a", "b"))


def test_flexible_heads_are_refused_pointing_to_the_contrastive_functions():
    model = adapterhub.init(build_clip())
    with pytest.raises(ConfigError, match=r"two towers.*zero_shot_classify"):
        model.add_classification_head("h", num_labels=3)

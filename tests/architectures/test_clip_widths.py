"""``CLIPModel`` with towers of different widths (as released CLIP checkpoints: text 512, vision 768): every method
sizes its modules per layer stack (``ModelDims.stacks``). The tiny model has a text tower of width 32 (2 layers, 4
heads of 8) and a vision tower of width 48 (3 layers, 3 heads of 16, FFN 53). The method matrix on it (inactive
adapters bit-identical, active ones change both towers, training changes only the adapter, save/load round trips
identical, the saved files validate without a model), merging, Stack and Fuse, the contrastive loss and zero-shot
classification with adapters, and LoRA on both towers equal to peft's on the same weights."""

from __future__ import annotations

import pytest
import torch

import adapterhub
from adapterhub import Fuse, Stack
from adapterhub.errors import IncompatibleModelError
from adapterhub.heads.contrastive import clip_contrastive_loss, clip_logits, zero_shot_classify
from adapterhub.io.manifest import inspect_adapter_dir
from adapterhub.methods import StackDims
from tiny_models import build_clip, clip_with_adapters, make_clip_inputs, perturb
from tiny_models import clip_outputs as outputs

# the vision tower: wider, one more layer, fewer and wider heads, another FFN width
VISION = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, intermediate_size=53)
TEXT_LAYERS, LAYERS = 2, 5
# config string -> the method name its saved manifest records
METHODS = {
    "pfeiffer": "bottleneck",
    "houlsby": "bottleneck",
    "parallel": "parallel",
    "compacter[reduction_factor=4]": "compacter",
    "lora[targets=[q,k,v,attn_out,ffn_in,ffn_out]]": "lora",
    "dora": "dora",
    "ia3": "ia3",
    "loha": "loha",
    "lokr": "lokr",
    "vera": "vera",
    "oft": "oft",
    "boft": "boft",
    "prefix_tuning[prefix_length=3]": "prefix_tuning",
    "prefix_tuning[prefix_length=3,flat=true]": "prefix_tuning",
    "gated_lora": "gated_lora",
    "gated_bottleneck": "gated_bottleneck",
    "gated_prefix_tuning[prefix_length=3]": "gated_prefix_tuning",
    "mam": "union",
    "unipelt": "union",
    "pfeiffer+inv": "bottleneck_inv",
}
MERGEABLE = ["lora[targets=[q,k,v,attn_out,ffn_in,ffn_out]]", "dora", "ia3", "oft", "loha", "lokr", "vera"]


def build():
    return build_clip(**VISION)


@pytest.fixture
def inputs():
    return make_clip_inputs()


def make(config: str, names=("a",)):
    return clip_with_adapters(config, names, **VISION)


def test_dims_are_per_stack():
    dims = adapterhub.init(build()).model_dims()
    assert (dims.num_layers, dims.decoder_start, dims.hidden_size, dims.num_heads) == (LAYERS, 2, 32, 4)
    text, vision = dims.stacks
    assert (text.start, text.hidden_size, text.num_heads, text.num_kv_heads, text.head_dim) == (
        0,
        32,
        4,
        4,
        8,
    )
    assert (vision.start, vision.hidden_size, vision.num_heads, vision.head_dim) == (2, 48, 3, 16)
    assert [dims.hidden_size_at(i) for i in range(LAYERS)] == [32, 32, 48, 48, 48]
    assert dims.linear_shape("ffn_in", 1) == (32, 37) and dims.linear_shape("ffn_in", 4) == (48, 53)
    assert dims.linear_shape("ffn_out") == (37, 32)  # model-wide: the first stack's
    assert dims.unsupported == (("method:prompt_tuning", dims.unsupported_reason("method", "prompt_tuning")),)
    # without listed stacks every layer has the model-wide widths
    plain = StackDims(0, 32, dims.linear_shapes, 4, 4, 8)
    assert type(dims)(dims.model_type, 32, 2, True, dims.linear_shapes, 4, 4, 8).stack_at(1) == plain


@pytest.mark.parametrize("config", METHODS)
def test_method_matrix_on_towers_of_different_widths(config, inputs, tmp_path):
    reference = build()(**inputs)
    model = make(config)
    text, image, logits = outputs(model, inputs)
    assert torch.equal(text, reference.text_embeds) and torch.equal(image, reference.image_embeds)
    assert torch.equal(logits, reference.logits_per_image)
    expected = outputs(model, inputs, "a")
    assert not torch.allclose(expected[0], text, atol=1e-4)
    assert not torch.allclose(expected[1], image, atol=1e-4)
    # save / load round trip: identical outputs; the files validate without a model
    model.save_adapter(tmp_path / "a", "a")
    fresh = adapterhub.init(build())
    fresh.load_adapter(tmp_path / "a", set_active=True)
    for got, want in zip(outputs(fresh, inputs, "a"), expected, strict=True):
        assert torch.equal(got, want)
    manifest = inspect_adapter_dir(tmp_path / "a")
    assert manifest.method == METHODS[config]
    saved = model._adapterhub.adapters["a"].state_dict()  # VeRA: its saved projections too
    assert manifest.num_parameters == sum(t.numel() for t in saved.values())
    # training on CLIP's loss changes only the adapter
    model.train_adapter("a")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**inputs, return_loss=True).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith("_adapterhub.adapters.a.") for n in changed)
    per_layer = {int(n.split("layers.")[1].split(".")[0]) for n in changed if ".layers." in n}
    assert not per_layer or per_layer & {2, 3, 4}  # the vision tower's layers train (prefix: one MLP)


def test_modules_take_the_width_of_their_layer():
    model = make("pfeiffer")
    adapter = model._adapterhub.adapters["a"]
    assert adapter.layers["1"]["ffn"].up.bias.shape == (32,)
    assert adapter.layers["2"]["ffn"].up.bias.shape == (48,)
    lora = make("lora[targets=[q,ffn_in]]")._adapterhub.adapters["a"]
    assert lora.layers["0"]["ffn_in"].lora_B.shape == (37, 8)
    assert lora.layers["4"]["ffn_in"].lora_A.shape == (8, 48)
    prefix = make("prefix_tuning[prefix_length=3]")._adapterhub.adapters["a"]
    assert prefix.width == TEXT_LAYERS * 2 * 32 + 3 * 2 * 48  # Σ 2·H_kv·D over the layers
    assert [t.shape for t in prefix.prefix(1)] == [(1, 4, 3, 8)] * 2
    assert [t.shape for t in prefix.prefix(2)] == [(1, 3, 3, 16)] * 2


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


def test_stack_and_fusion_on_towers_of_different_widths(inputs, tmp_path):
    model = make("pfeiffer", names=("a", "b"))
    single = outputs(model, inputs, "a")
    stacked = outputs(model, inputs, Stack("a", "b"))
    assert not torch.allclose(stacked[0], single[0], atol=1e-4)
    assert not torch.allclose(stacked[1], single[1], atol=1e-4)
    fusion = model.add_adapter_fusion(Fuse("a", "b"))
    assert fusion.layers["0"]["ffn"].query.weight.shape == (32, 32)
    assert fusion.layers["4"]["ffn"].query.weight.shape == (48, 48)
    fused = outputs(model, inputs, Fuse("a", "b"))
    for tower in (0, 1):  # text, image
        assert torch.isfinite(fused[tower]).all()
        assert not torch.allclose(fused[tower], single[tower], atol=1e-4)
    model.save_adapter_fusion(tmp_path / "f", Fuse("a", "b"))
    for name in ("a", "b"):
        model.save_adapter(tmp_path / name, name)
    fresh = adapterhub.init(build())
    for name in ("a", "b"):
        fresh.load_adapter(tmp_path / name)
    fresh.load_adapter_fusion(tmp_path / "f")
    for got, want in zip(outputs(fresh, inputs, Fuse("a", "b")), fused, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("config", ["lora", "prefix_tuning[prefix_length=3]", "pfeiffer"])
def test_contrastive_loss_and_zero_shot_with_adapters(config):
    model = make(config)
    model.set_active_adapters("a")
    inputs = make_clip_inputs(batch=4)
    text = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad():
        theirs = model(**inputs, return_loss=True)
        loss = clip_contrastive_loss(model, inputs["pixel_values"], text)
        logits = clip_logits(model, inputs["pixel_values"], text)
    torch.testing.assert_close(loss, theirs.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits, theirs.logits_per_text, atol=1e-5, rtol=1e-6)
    with torch.no_grad(), model.adapter_setup(None):
        bare = model(**inputs, return_loss=True).loss
    assert not torch.allclose(loss, bare)
    images = inputs["pixel_values"][:3]
    prompts = {"input_ids": torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])}
    prompts["attention_mask"] = (prompts["input_ids"] != 0).long()
    scores = zero_shot_classify(model, images, prompts)
    with torch.no_grad():
        expected = model(pixel_values=images, **prompts).logits_per_image
    assert scores.shape == (3, 2)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-6)


def test_lora_on_both_towers_matches_peft_on_the_same_weights(inputs):
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(
        build(),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "fc1"], init_lora_weights=False
        ),
    ).eval()
    ours = adapterhub.init(build())
    ours.add_adapter("x", config="lora[r=4,alpha=8,targets=[q,v,ffn_in]]", set_active=True)
    lora = {n: p for n, p in theirs.named_parameters() if "lora_" in n}
    assert len(lora) == LAYERS * 3 * 2  # 5 layers x (q, v, fc1) x (A, B)
    modules = {"q": "self_attn.q_proj", "v": "self_attn.v_proj", "ffn_in": "mlp.fc1"}
    with torch.no_grad():
        for name, param in ours._adapterhub.adapters["x"].named_parameters():
            _, layer, point, which = name.split(".")  # layers.3.q.lora_A
            i = int(layer)
            tower = "text_model" if i < TEXT_LAYERS else "vision_model"
            index = i if i < TEXT_LAYERS else i - TEXT_LAYERS
            key = f"base_model.model.{tower}.encoder.layers.{index}.{modules[point]}.lora_{which[-1]}.default.weight"
            param.copy_(lora[key])
    with torch.no_grad():
        want = theirs(**inputs)
    got = outputs(ours, inputs, "x")
    torch.testing.assert_close(got[0], want.text_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want.image_embeds, atol=1e-5, rtol=1e-5)


def test_an_adapter_for_other_tower_widths_is_refused_naming_them(tmp_path):
    model = make("lora")
    model.save_adapter(tmp_path / "a", "a")
    equal = adapterhub.init(build_clip(num_hidden_layers=3))  # same layer count, vision width 32
    with pytest.raises(
        IncompatibleModelError, match=r"hidden 48 from layer 2.*this model: hidden 32 throughout"
    ):
        equal.load_adapter(tmp_path / "a")


def test_lora_arithmetic_fills_left_out_layers_at_their_widths(inputs):
    model = make("lora[leave_out=[3]]", names=("a",))
    model.add_adapter("b", config="lora[leave_out=[0]]")
    perturb(model._adapterhub.adapters["b"], seed=7)
    combined = model.average_adapter("ab", ["a", "b"], combine="cat")
    assert combined.layers["0"]["q"].lora_A.shape[1] == 32
    assert combined.layers["3"]["q"].lora_A.shape[1] == 48
    assert torch.isfinite(outputs(model, inputs, "ab")[1]).all()


@pytest.mark.parametrize("config", ["houlsby", "lora[targets=[q,k,v,ffn_in,ffn_out]]"])
def test_the_adapters_library_layout_round_trips(config, inputs, tmp_path):
    """Its CLIPModel files name each tower's layers by their own path; the widths come from the model."""
    model = make(config)
    expected = outputs(model, inputs, "a")
    model.save_adapter(tmp_path / "a", "a", layout="adapters", with_head=False)
    fresh = adapterhub.init(build())
    fresh.load_adapter(tmp_path / "a", set_active=True)
    for got, want in zip(outputs(fresh, inputs, "a"), expected, strict=True):
        assert torch.equal(got, want)

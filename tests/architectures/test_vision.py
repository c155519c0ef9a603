"""ViT (transformers 5 layout) carries the adapter methods: the method x ViT matrix (inactive adapters leave the
model bit-identical, active ones change it, training changes only the adapter and head, save/load round trips,
merging, row blocks), composition and fusion, the image-classification heads (ours and the model's own), and LoRA
outputs equal to peft's on the same weights.

CLIP's towers (``clip_vision_model``, ``clip_text_model``) each carry the methods too: outputs, round trips,
merging, and prompt tuning refused on the text tower (it pools at the end-of-text position).

ViT takes ``pixel_values`` (no token ids, no attention mask): the tiny model reads 16x16 RGB images in 4x4
patches, 17 positions with the CLS token."""

from __future__ import annotations

import pytest
import torch
import transformers

import adapterhub
from adapterhub import BatchSplit, Fuse, Stack
from adapterhub.errors import ConfigError
from method_checks import ACTIVE, check_merge, check_round_trip, check_row_blocks, hidden, make
from tiny_models import build, make_pixel_inputs, perturb

ARCH = "vit"
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
    "prompt_tuning[prompt_length=3]": "prompt_tuning",
    "mam": "union",
    "unipelt": "union",
}
MERGEABLE = ["lora[targets=[q,k,v,attn_out,ffn_in,ffn_out]]", "dora", "ia3"]


@pytest.fixture
def pixels():
    return make_pixel_inputs()


@pytest.mark.parametrize("config", METHODS)
def test_inactive_is_bit_identical_and_active_changes_outputs(config, pixels):
    model = make(ARCH, config)
    reference = build(ARCH)(**pixels).last_hidden_state
    assert torch.equal(hidden(model, pixels), reference)
    active = hidden(model, pixels, "a")
    if config.startswith("prompt_tuning"):  # the prompt's positions come first: (B, P + 17, d)
        assert active.shape[1] == reference.shape[1] + 3
        active = active[:, 3:]
    assert active.shape == reference.shape
    assert not torch.allclose(active, reference, atol=1e-4)


@pytest.mark.parametrize("config", METHODS)
def test_training_changes_only_the_adapter_and_its_image_classification_head(config, pixels):
    model = make(ARCH, config, names=("a",))
    model.add_classification_head("a", num_labels=3)
    model.train_adapter("a")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(**pixels, labels=torch.tensor([0, 1, 2]))
    assert out.logits.shape == (3, 3)
    out.loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("_adapterhub.adapters.a.") for n in changed)
    assert any(n.startswith("_adapterhub.heads.a.") for n in changed)
    assert all(n.startswith(("_adapterhub.adapters.a.", "_adapterhub.heads.a.")) for n in changed)


@pytest.mark.parametrize("config", METHODS)
def test_save_and_load_round_trip(config, pixels, tmp_path):
    model = make(ARCH, config)
    check_round_trip(ARCH, model, pixels, tmp_path, METHODS[config])


@pytest.mark.parametrize("config", MERGEABLE)
def test_merged_equals_unmerged_and_unmerge_restores(config, pixels):
    check_merge(make(ARCH, config), pixels)


@pytest.mark.parametrize("config", ["pfeiffer", "lora", "ia3"])
def test_row_blocks_and_parallel_give_each_row_its_adapter(config, pixels):
    check_row_blocks(make(ARCH, config), pixels)


def test_prefix_tuning_row_blocks_give_each_image_its_prefix(pixels):
    """No attention mask on ViT: the prefix's keys and values are seen by every position of its own rows only."""
    model = make(ARCH, "prefix_tuning[prefix_length=3]")
    out = hidden(model, pixels, BatchSplit("a", "b", batch_sizes=[2, 1]))
    first = hidden(model, {"pixel_values": pixels["pixel_values"][:2]}, "a")
    second = hidden(model, {"pixel_values": pixels["pixel_values"][2:]}, "b")
    torch.testing.assert_close(out, torch.cat([first, second]), atol=1e-5, rtol=0)


def test_stack_and_fusion_compose_on_vit(pixels):
    model = make(ARCH, "pfeiffer")
    stacked = hidden(model, pixels, Stack("a", "b"))
    assert not torch.allclose(stacked, hidden(model, pixels, "a"), atol=1e-4)
    model.add_adapter_fusion(Fuse("a", "b"))
    fused = hidden(model, pixels, Fuse("a", "b"))
    assert fused.shape == stacked.shape and torch.isfinite(fused).all()
    assert not torch.allclose(fused, hidden(model, pixels, "a"), atol=1e-4)
    assert not torch.allclose(fused, hidden(model, pixels, "b"), atol=1e-4)


def test_the_models_own_image_classifier_reads_the_adapted_cls_token(pixels):
    """ViTForImageClassification's classifier (on the CLS position) sees the adapted hidden states."""
    model = adapterhub.init(build(ARCH, "image_classification", num_labels=4))
    bare = model(**pixels).logits
    model.add_adapter("a", config="lora", set_active=True)
    perturb(model._adapterhub.adapters["a"])
    logits = model(**pixels).logits
    assert logits.shape == (3, 4) and not torch.allclose(logits, bare, atol=1e-4)
    with model.adapter_setup(None):
        assert torch.equal(model(**pixels).logits, bare)


def test_lora_on_vit_matches_peft_on_the_same_weights(pixels):
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(
        build(ARCH),
        peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    ).eval()
    ours = adapterhub.init(build(ARCH))
    ours.add_adapter("x", config="lora[r=4,alpha=8,targets=[q,v]]", set_active=True)
    lora = {n: p for n, p in theirs.named_parameters() if "lora_" in n}
    assert len(lora) == 8  # 2 layers x (q, v) x (A, B)
    with torch.no_grad():
        for name, param in ours._adapterhub.adapters["x"].named_parameters():
            _, layer, point, which = name.split(".")  # layers.0.q.lora_A
            which = which[-1]
            key = f"base_model.model.layers.{layer}.attention.{point}_proj.lora_{which}.default.weight"
            param.copy_(lora[key])
    torch.testing.assert_close(
        hidden(ours, pixels, ACTIVE), theirs(**pixels).last_hidden_state, atol=1e-5, rtol=1e-5
    )


# ------------------------------------------------------------------------------------------------ CLIP towers

CLIP_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    image_size=16,
    patch_size=4,
    projection_dim=16,
)
CLIP_TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=20,
    projection_dim=16,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def clip_tower(tower: str):
    """A tiny CLIP tower with its projection, and inputs for it: (model, inputs, the output embedding's key)."""
    torch.manual_seed(0)
    if tower == "vision":
        model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP_VISION))
        return model.eval(), make_pixel_inputs(), "image_embeds"
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0], [1, 9, 10, 2]])
    model = transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig(**CLIP_TEXT))
    return model.eval(), {"input_ids": ids, "attention_mask": (ids != 0).long()}, "text_embeds"


CLIP_METHODS = [c for c in METHODS if not c.startswith("prompt_tuning")] + ["pfeiffer+inv"]


@pytest.mark.parametrize("tower", ["vision", "text"])
@pytest.mark.parametrize("config", CLIP_METHODS)
def test_clip_towers_carry_the_methods(tower, config, tmp_path):
    bare, inputs, key = clip_tower(tower)
    reference = bare(**inputs)[key]
    model = adapterhub.init(clip_tower(tower)[0])
    model.add_adapter("a", config=config)
    perturb(model._adapterhub.adapters["a"], std=0.3)
    with torch.no_grad():
        assert torch.equal(model(**inputs)[key], reference)  # inactive: bit-identical
        with model.adapter_setup("a"):
            adapted = model(**inputs)[key]
    assert not torch.allclose(adapted, reference, atol=1e-4)
    model.save_adapter(tmp_path / "a", "a")
    fresh = adapterhub.init(clip_tower(tower)[0])
    fresh.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        assert torch.equal(fresh(**inputs)[key], adapted)


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_clip_tower_lora_merges(tower):
    model, inputs, key = clip_tower(tower)
    model = adapterhub.init(model)
    model.add_adapter("a", config="lora[targets=[q,v,ffn_in]]", set_active=True)
    perturb(model._adapterhub.adapters["a"], std=0.3)
    with torch.no_grad():
        unmerged = model(**inputs)[key]
        model.merge_adapter("a")
        torch.testing.assert_close(model(**inputs)[key], unmerged, atol=1e-5, rtol=0)


def test_clip_vision_tower_takes_prompt_tuning_and_the_text_tower_refuses_it():
    vision = adapterhub.init(clip_tower("vision")[0])
    vision.add_adapter("p", config="prompt_tuning[prompt_length=3]")
    text = adapterhub.init(clip_tower("text")[0])
    with pytest.raises(ConfigError, match="end-of-text position"):
        text.add_adapter("p", config="prompt_tuning[prompt_length=3]")
    assert "p" not in text._adapterhub.adapters

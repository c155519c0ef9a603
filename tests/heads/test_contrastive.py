"""CLIP's contrastive loss and zero-shot classification over a two-tower ``CLIPModel`` (adapterhub.heads.contrastive):
equal to what ``CLIPModel`` itself computes (``return_loss=True``'s loss, ``logits_per_image``) with and without
adapters, and a LoRA adapter trained on the loss lowers it while the base stays frozen."""

from __future__ import annotations

import pytest
import torch
import transformers

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.heads.contrastive import (
    clip_contrastive_loss,
    clip_logits,
    contrastive_loss,
    zero_shot_classify,
)
from tiny_models import CLIP_VISION, build_clip, make_clip_inputs, perturb


def _text(inputs):
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


@pytest.mark.parametrize("config", [None, "lora", "prefix_tuning[prefix_length=3]", "pfeiffer"])
def test_the_contrastive_loss_equals_clip_models_own(config):
    model = adapterhub.init(build_clip())
    inputs = make_clip_inputs(batch=4)
    if config is not None:
        model.add_adapter("a", config=config, set_active=True)
        perturb(model._adapterhub.adapters["a"])
    with torch.no_grad():
        theirs = model(**inputs, return_loss=True)
        ours = clip_contrastive_loss(model, inputs["pixel_values"], _text(inputs))
        logits = clip_logits(model, inputs["pixel_values"], _text(inputs))
    torch.testing.assert_close(ours, theirs.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits, theirs.logits_per_text, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(contrastive_loss(theirs.logits_per_text), theirs.loss, atol=1e-6, rtol=1e-6)


def test_the_loss_is_the_mean_of_both_directions_cross_entropy():
    """The stated math on a hand-made matrix: ½ (CE(L, diag) + CE(Lᵀ, diag))."""
    logits = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    rows = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 1]) / 2
    cols = -(torch.log_softmax(logits, 0)[0, 0] + torch.log_softmax(logits, 0)[1, 1]) / 2
    torch.testing.assert_close(contrastive_loss(logits), (rows + cols) / 2)


@pytest.mark.parametrize("config", [None, "lora", "prefix_tuning[prefix_length=3]"])
def test_zero_shot_logits_equal_clip_models_logits_per_image(config):
    """3 images against 2 class prompts (the towers' batches differ)."""
    model = adapterhub.init(build_clip())
    if config is not None:
        model.add_adapter("a", config=config, set_active=True)
        perturb(model._adapterhub.adapters["a"])
    images = make_clip_inputs(batch=3)["pixel_values"]
    prompts = {"input_ids": torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])}
    prompts["attention_mask"] = (prompts["input_ids"] != 0).long()
    logits = zero_shot_classify(model, images, prompts)
    with torch.no_grad():
        theirs = model(pixel_values=images, **prompts).logits_per_image
    assert logits.shape == (3, 2)
    torch.testing.assert_close(logits, theirs, atol=1e-5, rtol=1e-6)
    # token ids alone (no mask) and strings through a tokenizer give the same scores for unpadded prompts
    same = torch.tensor([[1, 5, 6, 2], [1, 7, 8, 2]])
    vocab = {"a": 5, "cat": 6, "dog": 7, "bird": 8}

    def tokenizer(texts, padding, return_tensors):
        ids = [[1, *(vocab[w] for w in text.split()), 2] for text in texts]
        return {
            "input_ids": torch.tensor(ids),
            "attention_mask": torch.ones(len(ids), len(ids[0]), dtype=torch.long),
        }

    by_ids = zero_shot_classify(model, images, same)
    by_text = zero_shot_classify(model, images, ["a cat", "dog bird"], tokenizer=tokenizer)
    assert torch.equal(by_ids, by_text)


def test_errors_name_what_to_do():
    model = adapterhub.init(build_clip())
    images = make_clip_inputs(batch=2)["pixel_values"]
    with pytest.raises(ConfigError, match="no tokenizer"):
        zero_shot_classify(model, images, ["a cat", "a dog"])
    with pytest.raises(ConfigError, match="one caption per image"):
        clip_contrastive_loss(model, images, torch.tensor([[1, 5, 2], [1, 6, 2], [1, 7, 2]]))
    tower = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**CLIP_VISION))
    with pytest.raises(ConfigError, match="not a two-tower CLIP model"):
        zero_shot_classify(tower, images, torch.tensor([[1, 5, 2]]))


def test_lora_trained_on_the_contrastive_loss_lowers_it_and_the_base_stays_frozen():
    """8 synthetic image-caption pairs (random images, random captions); a LoRA on both towers learns to match
    them in 30 full-batch steps."""
    model = adapterhub.init(build_clip())
    data = make_clip_inputs(seed=7, batch=8)
    model.add_adapter("pairs", config="lora[r=4,targets=[q,v,ffn_in,ffn_out]]")
    model.train_adapter("pairs")
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("_adapterhub.")}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(
        n.startswith("_adapterhub.adapters.pairs.") for n, p in model.named_parameters() if p.requires_grad
    )
    with torch.no_grad():
        start = clip_contrastive_loss(model, data["pixel_values"], _text(data)).item()
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.0)
    for _ in range(30):
        optimizer.zero_grad()
        clip_contrastive_loss(model, data["pixel_values"], _text(data)).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        end = clip_contrastive_loss(model, data["pixel_values"], _text(data)).item()
        with model.adapter_setup(None):
            bare = clip_contrastive_loss(model, data["pixel_values"], _text(data)).item()
    assert end < 0.5 * start, (start, end)
    assert bare == pytest.approx(start, abs=1e-6)  # without the adapter: the untouched base
    for name, param in model.named_parameters():
        if name in base:
            assert torch.equal(param, base[name]), name

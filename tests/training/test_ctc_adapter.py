"""wav2vec2's own CTC head (``Wav2Vec2ForCTC``) trained through an adapter with the Python API on a tiny synthetic
speech set: each character is a tone of its own pitch, a clip spells a word, the targets come from a
``Wav2Vec2CTCTokenizer`` character vocabulary. The CTC loss falls, the base stays frozen, and the ``lm_head``
trains only when asked (``train_adapter(..., train_head=True)``)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

import adapterhub
from tiny_models import build

LETTERS = "abcdefg"  # with <pad> (the CTC blank, id 0), <s>, </s>, <unk>, | : the tiny model's 12 outputs
RATE = 16_000
SEGMENT = 480  # samples per character (30 ms; 58 frames after the tiny model's convolutions)


@pytest.fixture
def tokenizer(tmp_path):
    import transformers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, **{c: 5 + i for i, c in enumerate(LETTERS)}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    return transformers.Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))


def spoken(word: str, rng: random.Random) -> torch.Tensor:
    """A clip spelling ``word``: one noisy sine per character, 300 Hz + 250 Hz per letter index. (samples,)"""
    samples = []
    for char in word:
        frequency = 300 + 250 * LETTERS.index(char)
        samples += [math.sin(2 * math.pi * frequency * t / RATE) + rng.gauss(0, 0.05) for t in range(SEGMENT)]
    values = torch.tensor(samples)
    return (values - values.mean()) / values.std()


def speech_batch(tokenizer) -> dict[str, torch.Tensor]:
    """8 clips of 2-4 characters, zero-padded, with their sample mask and CTC targets (-100 past each word)."""
    rng = random.Random(0)
    words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 4))) for _ in range(8)]
    clips = [spoken(word, rng) for word in words]
    longest = max(clip.shape[0] for clip in clips)
    values = torch.zeros(len(clips), longest)  # (batch, samples)
    mask = torch.zeros(len(clips), longest, dtype=torch.long)
    for row, clip in enumerate(clips):
        values[row, : clip.shape[0]], mask[row, : clip.shape[0]] = clip, 1
    ids = tokenizer(words, padding=True, return_tensors="pt")
    labels = ids.input_ids.masked_fill(ids.attention_mask == 0, -100)  # (batch, longest word)
    assert tokenizer.batch_decode(ids.input_ids, group_tokens=False) == words  # one id per character
    return {"input_values": values, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("config", ["pfeiffer", "lora"])
@pytest.mark.parametrize("train_head", [False, True])
def test_ctc_loss_falls_with_only_the_adapter_and_asked_for_head_training(config, train_head, tokenizer):
    torch.manual_seed(0)
    overrides = {"layerdrop": 0.0, "mask_time_prob": 0.0, "ctc_loss_reduction": "mean"}
    model = adapterhub.init(build("wav2vec2", "ctc", do_stable_layer_norm=True, **overrides))
    # a head at the scale of a fine-tuned one: the random init's std 0.02 keeps the logits of the layer-normed
    # states near uniform whatever a frozen-head adapter does
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    model.add_adapter("asr", config=config)
    model.train_adapter("asr", train_head=train_head)
    batch = speech_batch(tokenizer)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=3e-2)
    losses = []
    for _ in range(30):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert max(losses[-5:]) < 0.1 * losses[0], losses  # CTC loss per target character
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("_adapterhub.adapters.asr.") for name in changed)
    head = {"lm_head.weight", "lm_head.bias"}
    assert (head <= changed) if train_head else not (head & changed)
    assert all(
        name.startswith("_adapterhub.adapters.asr.") or name in head for name in changed
    )  # base frozen

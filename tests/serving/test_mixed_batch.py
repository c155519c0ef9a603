"""A request's result inside a mixed batch equals running it alone with the ordinary model API (within 1e-5):
Pfeiffer, Houlsby and LoRA adapters, heads with different label counts, regression, multi-label, tagging, QA,
multiple choice and a Stack setup, all in one forward pass."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch

from adapterhub import Fuse, Stack
from adapterhub.serving.engine import EngineConfig, ServingEngine

TOL = 1e-5

REQUESTS: list[dict[str, Any]] = [
    {"adapter": "cls3", "inputs": ["the movie was good", "a bad film"]},
    {"adapter": "cls2", "inputs": ["it was not very fun and the plot was dull but i liked it"]},
    {"adapter": "reg", "inputs": ["great", "awful film"]},
    {"adapter": "tag", "inputs": ["the plot is good", "i hated it"]},
    {"adapter": "multi", "inputs": [["who liked it", "the film"]]},
    {"adapter": "qa", "inputs": [["who liked the film", "i liked the film but not the plot"]]},
    {"adapter": "mc", "inputs": [{"context": "the film was", "choices": ["good", "bad", "very dull"]}]},
    {"setup": "Stack(lang, task)", "inputs": ["a great movie", "dull"]},
    {"adapter": "cls3", "inputs": ["fun"]},
    {"setup": "Fuse(fa, fb)", "inputs": ["the plot was awful", "great"]},
]
SETUPS = {"Stack(lang, task)": (Stack("lang", "task"), None), "Fuse(fa, fb)": (Fuse("fa", "fb"), "fab")}


def _reference(model: Any, tokenizer: Any, request: dict[str, Any]) -> list[torch.Tensor]:
    """Logits of the request's inputs, one input at a time, through the model API (no padding at all)."""
    setup, head = SETUPS.get(request.get("setup"), (request.get("adapter"), None))
    model.active_head = head  # the fusion's own head (a test-only change of the shared model)
    out = []
    with torch.no_grad(), model.adapter_setup(setup):
        for item in request["inputs"]:
            if isinstance(item, dict):  # multiple choice: (1, n_choices, T)
                enc = tokenizer([item["context"]] * len(item["choices"]), item["choices"], return_tensors="pt",
                                padding=True)  # fmt: skip
                output = model(**{k: v[None] for k, v in enc.items()})
                out.append(output.logits[0])
                continue
            enc = tokenizer(
                *([item] if isinstance(item, str) else [[item[0]], [item[1]]]), return_tensors="pt"
            )
            output = model(**enc)
            if request.get("adapter") == "qa":
                out.append(torch.stack([output.start_logits[0], output.end_logits[0]]))
            else:
                out.append(output.logits[0])
    return out


def _served(prediction: dict[str, Any], adapter: str | None) -> torch.Tensor:
    if "tokens" in prediction:  # tagging: real tokens only; the reference keeps [CLS]/[SEP]
        return torch.tensor([t["logits"] for t in prediction["tokens"]], dtype=torch.float64)
    if "start_logits" in prediction:
        return torch.tensor([prediction["start_logits"], prediction["end_logits"]], dtype=torch.float64)
    return torch.tensor(prediction["logits"], dtype=torch.float64)


async def _serve_all(engine: ServingEngine, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    await engine.start()
    for name in ("cls3", "cls2", "reg", "tag", "multi", "qa", "mc", "lang", "task", "fa", "fb"):
        await engine.load(name)
    await engine.predict(["warm"], setup="Fuse(fa, fb)")  # loads the fusion weights
    results = await asyncio.gather(*(engine.predict(logits=True, **r) for r in requests))
    await engine.shutdown()
    return list(results)


def test_mixed_batch_equals_each_request_alone(
    tiny_bert_dir, adapter_dirs, fusion_dir, offline_model, tokenizer
):
    engine = ServingEngine.from_pretrained(
        str(tiny_bert_dir),
        adapters={k: str(v) for k, v in adapter_dirs.items()},
        config=EngineConfig(max_loaded=11, max_batch_rows=64, max_wait_ms=300),
        fusions=[fusion_dir],
    )
    results = asyncio.run(_serve_all(engine, REQUESTS))
    # every request went through ONE forward pass (the first pass warmed the fusion up)
    assert engine.metrics.batch_requests.count == 2
    assert engine.metrics.batch_requests.total == 1 + len(REQUESTS)
    assert engine.metrics.batch_rows.total == 1 + sum(
        len(r["inputs"]) if r.get("adapter") != "mc" else 3 for r in REQUESTS
    )
    for request, result in zip(REQUESTS, results, strict=True):
        expected = _reference(offline_model, tokenizer, request)
        assert len(result["predictions"]) == len(expected)
        for prediction, reference in zip(result["predictions"], expected, strict=True):
            served = _served(prediction, request.get("adapter"))
            if "tokens" in prediction:
                reference = reference[1:-1]  # [CLS] ... [SEP]
            assert served.shape == reference.shape, request
            assert torch.allclose(served, reference.double(), atol=TOL, rtol=0), (request, served, reference)


def test_json_shapes_per_head(tiny_bert_dir, adapter_dirs, fusion_dir):
    engine = ServingEngine.from_pretrained(
        str(tiny_bert_dir),
        adapters={k: str(v) for k, v in adapter_dirs.items() if k not in ("fa", "fb")},  # from the fusion dir
        config=EngineConfig(max_loaded=11),
        fusions=[fusion_dir],
    )
    results = asyncio.run(_serve_all(engine, REQUESTS))
    by = {
        r.get("adapter") or r["setup"]: res["predictions"] for r, res in zip(REQUESTS, results, strict=False)
    }
    cls3 = by["cls3"][0]
    assert set(cls3["scores"]) == {"neg", "neu", "pos"} and cls3["label"] in cls3["scores"]
    assert sum(cls3["scores"].values()) == pytest.approx(1.0, abs=1e-6)
    assert set(by["cls2"][0]["scores"]) == {"LABEL_0", "LABEL_1"}
    assert isinstance(by["reg"][0]["value"], float)
    multi = by["multi"][0]
    assert set(multi["scores"]) == {"x", "y", "z"} and set(multi["labels"]) <= {"x", "y", "z"}
    assert [t["token"] for t in by["tag"][0]["tokens"]] == ["the", "plot", "is", "good"]
    assert all(t["label"] in {"O", "B", "I", "X"} for t in by["tag"][0]["tokens"])
    qa = by["qa"][0]
    context = "i liked the film but not the plot"
    assert qa["answer"] == context[qa["start"] : qa["end"]] and qa["answer"]
    mc = by["mc"][0]
    assert mc["choice"] in (0, 1, 2) and len(mc["scores"]) == 3
    assert set(by["Fuse(fa, fb)"][0]["scores"]) == {"no", "yes"}  # the fusion's own head

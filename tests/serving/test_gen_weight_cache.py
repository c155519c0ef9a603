"""Grouped LoRA weights reused between the engine's steps (``methods/grouped_weights.WeightCache``): reused while
the mix and the weights are unchanged; rebuilt when an adapter's weights are written in place, when an adapter is
deleted and loaded again under its name, and never used with gradients on or outside the caller's block. The
engine's tokens stay those of ``generate`` with each adapter's current weights."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.methods import grouped_weights
from adapterhub.serving import GenerationEngine
from tiny_models import build, perturb


def test_cache_reuses_until_a_source_changes():
    cache = grouped_weights.WeightCache()
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    built: list[int] = []

    def build_cat() -> torch.Tensor:
        built.append(1)
        return torch.cat([a, b])

    with torch.no_grad():
        assert (
            grouped_weights.cached("k", [a, b], build_cat) is not None
        )  # outside caching(): built, not kept
        with grouped_weights.caching(cache):
            first = grouped_weights.cached("k", [a, b], build_cat)
            assert grouped_weights.cached("k", [a, b], build_cat) is first
            b.add_(1.0)  # in place: the version moves
            second = grouped_weights.cached("k", [a, b], build_cat)
            assert second is not first and torch.equal(second[2:], b)
            c = b.clone()  # same values, another tensor
            assert grouped_weights.cached("k", [a, c], build_cat) is not second
            assert grouped_weights.cached("k", [a], build_cat) is not None  # another count
    with grouped_weights.caching(cache):  # gradients on: never cached
        before = len(built)
        grouped_weights.cached("k", [a], build_cat)
        grouped_weights.cached("k", [a], build_cat)
        assert len(built) == before + 2
    assert len(built) == 7 and cache.hits == 1


@pytest.fixture
def model() -> Any:
    return fresh_model()


PROMPTS = [[5, 9, 14, 3, 22], [7, 2, 8], [11, 40, 6, 19], [31, 4, 4, 17, 9, 2]]
ADAPTERS = ["a", "b", "c", "b"]


def reference(model: Any, prompt: list[int], adapter: str) -> list[int]:
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


def staggered(engine: GenerationEngine) -> list[list[int]]:
    handles: list[Any] = []
    while len(handles) < len(PROMPTS) or any(h.status != "finished" for h in handles):
        if len(handles) < len(PROMPTS):
            i = len(handles)
            handles.append(engine.submit(PROMPTS[i], adapter=ADAPTERS[i], max_new_tokens=6))
        engine.step()
    return [h.result() for h in handles]


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_engine_reuses_grouped_weights_and_follows_changes(model, packed):
    engine = GenerationEngine(model, max_num_seqs=4, stop_ids=[], packed=packed)
    expected = [reference(model, p, a) for p, a in zip(PROMPTS, ADAPTERS, strict=True)]
    assert staggered(engine) == expected
    assert engine._weights.hits > 0  # steps with an unchanged mix reused the joined weights

    with engine.exclusive(), torch.no_grad():  # "b" rewritten in place between steps
        for key, param in model._store.adapters["b"].named_parameters():
            if "lora_B" in key:
                param.mul_(-2.0)
    changed = [reference(model, p, a) for p, a in zip(PROMPTS, ADAPTERS, strict=True)]
    assert changed[1] != expected[1]
    assert staggered(engine) == changed

    with engine.exclusive():  # "c" deleted and added again under its name, with other weights
        model.delete_adapter("c")
        model.add_adapter("c", "lora")
        perturb(model._store.adapters["c"], std=0.3, seed=99)
    reloaded = [reference(model, p, a) for p, a in zip(PROMPTS, ADAPTERS, strict=True)]
    assert reloaded[2] != changed[2]
    assert staggered(engine) == reloaded


def together_with_changes(model: Any, packed: bool, change: Any) -> list[list[int]]:
    """All four submitted at once (one mix, step after step); ``change(model)`` between steps 2 and 3."""
    engine = GenerationEngine(model, max_num_seqs=4, stop_ids=[], packed=packed)
    handles = [engine.submit(p, adapter=a, max_new_tokens=6) for p, a in zip(PROMPTS, ADAPTERS, strict=True)]
    engine.step()
    engine.step()
    with engine.exclusive():
        change(model)
    while engine.step() is not None:
        pass
    return [h.result() for h in handles]


def rewrite_b(model: Any) -> None:
    with torch.no_grad():
        for key, param in model._store.adapters["b"].named_parameters():
            if "lora_B" in key:
                param.mul_(-2.0)


def reload_c(model: Any) -> None:
    model.delete_adapter("c")
    model.add_adapter("c", "lora")
    perturb(model._store.adapters["c"], std=0.3, seed=99)


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
@pytest.mark.parametrize("change", [rewrite_b, reload_c], ids=["in-place", "reloaded"])
def test_a_change_between_steps_of_one_mix_equals_no_cache(packed, change, monkeypatch):
    unchanged = together_with_changes(fresh_model(), packed, lambda m: None)
    cached = together_with_changes(fresh_model(), packed, change)
    assert cached != unchanged  # the change reaches the tokens
    monkeypatch.setattr(grouped_weights, "caching", lambda cache: contextlib.nullcontext())  # nothing kept
    assert cached == together_with_changes(fresh_model(), packed, change)


def fresh_model() -> Any:
    llama = build("llama", "causal_lm", seed=0)
    adapterhub.init(llama)
    for i, name in enumerate(("a", "b", "c")):
        llama.add_adapter(name, "lora")
        perturb(llama._store.adapters[name], std=0.3, seed=20 + i)
    return llama

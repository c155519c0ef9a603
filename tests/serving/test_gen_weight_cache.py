"""Grouped LoRA weights reused between the engine's steps (``methods/grouped_weights.WeightCache``): reused while
the mix and the weights are unchanged (equal ranks stacked by slot, unequal ones joined side by side); rebuilt when an adapter's weights are written in place, when an adapter is
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
from adapterhub.spec.composition import Split
from method_checks import one_by_one, packed_logits
from tiny_models import build, perturb


def test_unequal_ranks_keep_their_joined_factors_until_an_adapter_changes(monkeypatch):
    """LoRA factors of unequal ranks side by side (``grouped_weights.joined``): kept under the caller's cache while
    the mix and its adapters are unchanged; built again after an in-place write, for the mix in another order and
    after a reload; never kept outside ``caching()`` or with gradients on. Every pass equals slice by slice."""
    llama = fresh_model()
    llama.add_adapter("small", "lora[r=2]")
    perturb(llama._store.adapters["small"], std=0.3, seed=30)
    cache = grouped_weights.WeightCache()

    def step(mix: list[str]) -> torch.Tensor:
        with grouped_weights.caching(cache):
            out = packed_logits(llama, mix)
        expected = one_by_one(monkeypatch, lambda: packed_logits(llama, mix))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
        return out

    mix = ["a", "small", "b"]
    packed_logits(llama, mix)  # outside caching(): nothing kept
    first, _ = step(mix), step(mix)
    assert (cache.builds, cache.hits) == (POINTS, POINTS)
    with torch.no_grad():
        for key, param in llama._store.adapters["small"].named_parameters():
            if "lora_B" in key:
                param.mul_(-2.0)
    assert not torch.allclose(step(mix), first, atol=1e-4)
    step(["b", "small", "a"])
    assert (cache.builds, cache.hits) == (3 * POINTS, POINTS)
    llama.delete_adapter("small")
    llama.add_adapter("small", "lora[r=2]")
    perturb(llama._store.adapters["small"], std=0.3, seed=31)
    step(["b", "small", "a"])
    assert (cache.builds, cache.hits) == (4 * POINTS, POINTS)
    ids = torch.randint(3, 99, (1, 3), generator=torch.Generator().manual_seed(3))
    with grouped_weights.caching(cache), llama.adapter_setup(Split("b", "small", "a", split_index=[1, 2])):
        assert llama(input_ids=ids).logits.requires_grad  # gradients on: built afresh, nothing kept
    assert (cache.builds, cache.hits) == (4 * POINTS, POINTS)


POINTS = 4  # q, v of the tiny Llama's 2 layers


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

"""Preemption in the generation engine (tiny random Llama, float32): with ``preempt=True`` and a cache budget too
small for the running sequences, the newest is preempted (cache freed, re-queued) and recomputed later; every
completion (greedy LoRA / base rows, a seeded sampled row, chunked prefill too) equals the engine with room to
spare and ``model.generate`` alone; the cache held never exceeds the budget; preemptions are counted in ``stats``."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.serving import GenerationEngine
from tiny_models import build, perturb

NEW = 10
LENGTHS = (9, 4, 12, 7, 5, 11)
ADAPTERS = ("a", None, "b", "a", None, "b")


@pytest.fixture(scope="module")
def llama() -> Any:
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, "lora")
        perturb(model._store.adapters[name], std=0.2, seed=10 + i)
    return model


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(11)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in LENGTHS]


def reference(model: Any, prompt: list[int], adapter: str | None) -> list[int]:
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


SAMPLED = {"temperature": 0.9, "top_k": 40, "seed": 3}


def run(engine: GenerationEngine, prompts: list[list[int]], budget: int | None = None) -> list[list[int]]:
    """Row 3 sampled (seeded), the rest greedy; submitted two per step; checks the budget at every step."""
    handles: list[Any] = []
    while len(handles) < len(prompts) or any(h.status != "finished" for h in handles):
        for _ in range(2):
            if len(handles) < len(prompts):
                i = len(handles)
                kw = SAMPLED if i == 3 else {}
                handles.append(engine.submit(prompts[i], adapter=ADAPTERS[i], max_new_tokens=NEW, **kw))
        engine.step()
        if budget is not None:
            assert engine.stats()["reserved_tokens"] <= budget
    return [h.result() for h in handles]


@pytest.mark.parametrize(("budget", "block", "chunk"), [(48, 8, None), (40, 4, None), (36, 4, 3), (24, 1, 2)])
def test_preempted_sequences_are_recomputed_with_the_same_tokens(llama, prompts, budget, block, chunk):
    roomy = run(GenerationEngine(llama, max_num_seqs=8, stop_ids=[]), prompts)
    engine = GenerationEngine(
        llama, max_num_seqs=8, max_batch_tokens=32, max_cache_tokens=budget, preempt=True, cache_block=block,
        prefill_chunk=chunk, stop_ids=[],
    )  # fmt: skip
    tight = run(engine, prompts, budget)
    assert tight == roomy
    for i, (ids, prompt, adapter) in enumerate(zip(tight, prompts, ADAPTERS, strict=True)):
        if i != 3:
            assert ids == reference(llama, prompt, adapter)
    stats = engine.stats()
    assert stats["preempted"] > 0  # the budget forced it
    assert stats["cache_tokens"] == 0 and stats["reserved_tokens"] == 0 and stats["running"] == 0


def test_the_newest_running_sequence_is_preempted_and_requeued_first(llama, prompts):
    engine = GenerationEngine(
        llama, max_num_seqs=4, max_cache_tokens=24, preempt=True, cache_block=4, stop_ids=[]
    )
    old = engine.submit(prompts[0], adapter="a", max_new_tokens=NEW)  # 9 + 10 tokens at most
    new = engine.submit(prompts[1], max_new_tokens=NEW)  # 4 + 10
    engine.step()  # both admitted: 12 + 4 = 16 held
    assert engine.stats() == {
        "waiting": 0,
        "running": 2,
        "cache_tokens": 13,
        "reserved_tokens": 16,
        "preempted": 0,
    }
    while engine.stats()["preempted"] == 0:
        engine.step()
    assert new.status == "waiting" and new._seq.kv is None and old.status == "running"  # the newest gave way
    assert engine.stats()["reserved_tokens"] == old._seq.kv.capacity <= 24
    kept = list(new.tokens)
    assert kept and new.result()[: len(kept)] == kept  # recomputed: its tokens go on where they were
    assert old.result() == reference(llama, prompts[0], "a")
    assert new.result() == reference(llama, prompts[1], None)


def test_a_request_that_cannot_fit_the_budget_alone_is_refused(llama, prompts):
    engine = GenerationEngine(llama, max_cache_tokens=20, preempt=True, cache_block=8)
    with pytest.raises(ConfigError, match="24 cache tokens \\(in blocks of 8\\)"):
        engine.submit(prompts[1], max_new_tokens=15)  # 4 + 15 = 19 -> 24 in blocks of 8
    with pytest.raises(ConfigError, match="cache_block"):
        GenerationEngine(llama, preempt=True, cache_block=0)
    with pytest.raises(ConfigError, match="preempt"):
        GenerationEngine(llama, preempt="yes")  # type: ignore[arg-type]

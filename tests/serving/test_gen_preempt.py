"""Preemption in the generation engine (tiny random Llama, float32): with ``preempt=True`` and a cache budget too
small for the running sequences, the newest is preempted (cache freed, re-queued) and recomputed later; every
completion (greedy LoRA / base rows, a seeded sampled row, chunked prefill too) equals the engine with room to
spare and ``model.generate`` alone; the cache held never exceeds the budget; preemptions are counted in ``stats``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import torch

from adapterhub.errors import ConfigError
from adapterhub.serving import GenerationEngine
from adapterhub.serving.app import create_app
from adapterhub.serving.engine import EngineConfig, ServingEngine

NEW = 10
LENGTHS = (9, 4, 12, 7, 5, 11)
ADAPTERS = ("a", None, "b", "a", None, "b")


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


@pytest.mark.parametrize(
    ("budget", "block", "chunk"), [(28, 4, None), (40, 4, None), (36, 4, 3), (24, 1, 2), (30, 2, 4)]
)
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


def test_serve_model_options_reach_the_engine_and_keep_the_tokens(tiny_gpt2_dir):
    """``--prefill-chunk`` / ``--max-cache-tokens`` / ``--preempt`` / ``--cache-block`` reach the served generation engine; the completions
    of concurrent requests through the HTTP app equal those of the default engine."""
    from adapterhub.cli import build_parser
    from adapterhub.serving.cli import config_from_args

    directory, adapter = tiny_gpt2_dir
    argv = ["serve-model", "--model", str(directory), "--adapter", f"lm={adapter}", "--prefill-chunk", "2"]
    flags = ["--max-cache-tokens", "24", "--preempt", "--cache-block", "4"]
    _, config = config_from_args(build_parser().parse_args([*argv, *flags]))
    assert (config.prefill_chunk, config.max_cache_tokens, config.preempt, config.cache_block) == (
        2,
        24,
        True,
        4,
    )
    _, default = config_from_args(build_parser().parse_args(argv[:5]))
    assert (default.prefill_chunk, default.max_cache_tokens, default.preempt, default.cache_block) == (
        None, None, False, 16,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="prefill_chunk must be a positive integer"):
        EngineConfig(prefill_chunk=0)
    bodies = [
        {"model": "lm", "prompt": text, "max_tokens": 20, "temperature": 0}
        for text in ("the movie was very good and fun", "a bad plot", "it was not dull but great", "fun")
    ]

    async def answers(config: EngineConfig) -> tuple[list[str], dict]:
        engine = ServingEngine.from_pretrained(str(directory), adapters={"lm": str(adapter)}, config=config)
        app = create_app(engine)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                replies = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
        assert engine.generation is not None
        return [r.json()["choices"][0]["text"] for r in replies], engine.generation.engine.stats()

    tight = EngineConfig(max_wait_ms=1, prefill_chunk=2, max_cache_tokens=40, preempt=True, cache_block=4)
    (expected, _), (texts, stats) = (
        asyncio.run(answers(EngineConfig(max_wait_ms=1))),
        asyncio.run(answers(tight)),
    )
    assert texts == expected
    assert sum(len(t.split()) for t in texts) > 40  # long enough to outgrow the budget (not ended at eos)
    assert stats["preempted"] > 0

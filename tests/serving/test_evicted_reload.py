"""Evicted adapters reload on demand: with room for one adapter, two used alternately both answer as they do
alone (each reloaded from its source); a long stream of one adapter keeps producing tokens while another one is
fetched and loaded."""

from __future__ import annotations

import asyncio
import time

from adapterhub.serving import sources
from adapterhub.serving.engine import EngineConfig, ServingEngine


def _engine(directory, dirs, max_loaded):
    return ServingEngine.from_pretrained(
        str(directory),
        adapters={k: str(v) for k, v in dirs.items()},
        config=EngineConfig(max_wait_ms=1, max_loaded=max_loaded),
    )


def test_two_adapters_alternate_with_room_for_one(tiny_llama_loras):
    directory, dirs = tiny_llama_loras
    prompts = ["the movie was", "i liked the plot"]

    async def run(engine, order):
        await engine.start()
        out = [await engine.generate(prompts, adapter=name, max_new_tokens=6) for name in order]
        loads = dict(engine.registry.load_count)
        await engine.shutdown()
        return [o["token_ids"] for o in out], loads

    reference, _ = asyncio.run(run(_engine(directory, dirs, 3), ["a", "b"]))
    alternating, loads = asyncio.run(run(_engine(directory, dirs, 1), ["a", "b", "a", "b", "a"]))
    assert reference[0] != reference[1]
    assert alternating == [reference[i % 2] for i in range(5)]
    assert loads == {"a": 3, "b": 2}  # every use after an eviction loaded it again from its source


def test_a_stream_keeps_producing_tokens_while_another_adapter_loads(tiny_llama_loras, monkeypatch):
    directory, dirs = tiny_llama_loras
    engine = _engine(directory, dirs, 2)
    engine.generation.engine.stop_ids = frozenset()  # no eos: the stream runs its full length
    fetch = sources.fetch
    window: list[float] = []

    def slow_fetch(source, model, **kwargs):
        if source.location == str(dirs["c"]):
            window.append(time.perf_counter())
            time.sleep(0.3)  # a slow download
            window.append(time.perf_counter())
        return fetch(source, model, **kwargs)

    monkeypatch.setattr(sources, "fetch", slow_fetch)
    hook = engine.model.register_forward_hook(lambda *args: time.sleep(0.01))  # >= 10 ms a step

    async def main():
        await engine.start()
        await engine.load("a")
        await engine.load("b")
        alone = await engine.generate(["the"], adapter="c", max_new_tokens=4)  # loads c (evicts a)
        await engine.remove_adapter("c")
        engine.registry.register("c", str(dirs["c"]))
        await engine.load("a")  # a and b in memory again; c must evict b
        stamps: list[float] = []
        stream = engine.generate_stream(["the"], adapter="a", max_new_tokens=60)

        async def consume():
            async for _ in stream:
                stamps.append(time.perf_counter())

        streaming = asyncio.create_task(consume())
        while not stamps:
            await asyncio.sleep(0.005)
        with_c = await engine.generate(["the"], adapter="c", max_new_tokens=4)
        await streaming
        loaded = list(engine.registry.loaded)
        await engine.shutdown()
        return alone, with_c, stamps, loaded

    try:
        alone, with_c, stamps, loaded = asyncio.run(main())
    finally:
        hook.remove()
    start, end = window[-2:]
    during = [t for t in stamps if start <= t <= end]
    assert len(stamps) == 60 and stamps[-1] > end  # a's stream outlived c's load
    assert len(during) >= 5  # ~30 steps fit in the 0.3 s fetch: a never stalled while c was fetched
    assert with_c["token_ids"] == alone["token_ids"]
    assert sorted(loaded) == ["a", "c"]  # b (unpinned, least recently used) made room; a stayed pinned

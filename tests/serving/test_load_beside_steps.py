"""An adapter load reads and builds the adapter beside the generation steps, and the model changes only in one
short pause between two steps: a slow ``sources.prepare`` (on the I/O pool) does not stall a running stream; a
block waiting in ``engine.exclusive()`` goes before the step loop's next step; ``prepare_adapter_from_record``
leaves the model unchanged and ``add_prepared_adapter`` then gives the same adapter as ``add_adapter_from_record``."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
import transformers

import adapterhub
from adapterhub.errors import AdapterExistsError
from adapterhub.io.loading import read_any_adapter_dir
from adapterhub.serving import sources
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.spec.architectures import spec_for_model_type


def test_a_slow_prepare_runs_on_the_io_pool_while_a_stream_goes_on(tiny_llama_loras, monkeypatch):
    directory, dirs = tiny_llama_loras
    engine = ServingEngine.from_pretrained(
        str(directory),
        adapters={k: str(v) for k, v in dirs.items()},
        config=EngineConfig(max_wait_ms=1, max_loaded=2),
    )
    engine.generation.engine.stop_ids = frozenset()  # no eos: the stream runs its full length
    prepare = sources.prepare
    window: list[float] = []
    threads: list[str] = []

    def slow_prepare(source, fetched, model, name):
        if name == "c":
            threads.append(threading.current_thread().name)
            window.append(time.perf_counter())
            time.sleep(0.3)  # a slow read and build of the adapter
            window.append(time.perf_counter())
        return prepare(source, fetched, model, name)

    monkeypatch.setattr(sources, "prepare", slow_prepare)
    hook = engine.model.register_forward_hook(lambda *args: time.sleep(0.01))  # >= 10 ms a step

    async def main():
        await engine.start()
        await engine.load("a")
        await engine.load("b")
        stamps: list[float] = []

        async def consume():
            async for _ in engine.generate_stream(["the"], adapter="a", max_new_tokens=60):
                stamps.append(time.perf_counter())

        streaming = asyncio.create_task(consume())
        while not stamps:
            await asyncio.sleep(0.005)
        with_c = await engine.generate(["the"], adapter="c", max_new_tokens=4)
        await streaming
        loaded = sorted(engine.registry.loaded)
        await engine.shutdown()
        return with_c, stamps, loaded

    try:
        with_c, stamps, loaded = asyncio.run(main())
    finally:
        hook.remove()
    start, end = window
    assert threads and threads[0].startswith("adapterhub-fetch")  # not the model thread
    assert len(stamps) == 60 and stamps[-1] > end
    assert len([t for t in stamps if start <= t <= end]) >= 5  # a kept decoding while c was prepared
    assert len(with_c["token_ids"][0]) == 4
    assert loaded == ["a", "c"]  # b (unpinned, least recently used) was evicted in the pause that put c in


def test_exclusive_goes_before_the_next_step_of_the_loop(tiny_llama_loras):
    directory, _ = tiny_llama_loras
    engine = ServingEngine.from_pretrained(str(directory), config=EngineConfig(max_wait_ms=1))
    generation = engine.generation.engine
    generation.stop_ids = frozenset()
    steps = [0]

    def count(*args):
        steps[0] += 1
        time.sleep(0.005)

    hook = engine.model.register_forward_hook(count)
    generation.start()
    try:
        handle = generation.submit([3, 4, 5], max_new_tokens=55)
        while steps[0] < 2:
            time.sleep(0.001)
        waited = []
        for _ in range(8):
            before = steps[0]
            with generation.exclusive():
                waited.append(steps[0] - before)
            time.sleep(0.002)
        handle.result()
    finally:
        generation.close()
        hook.remove()
    assert max(waited) <= 1  # at most the step that was running when the block asked


def test_prepared_adapter_leaves_the_model_unchanged_until_added(tiny_llama_loras):
    directory, dirs = tiny_llama_loras

    def fresh():
        return adapterhub.init(transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval())

    model, reference = fresh(), fresh()
    spec = spec_for_model_type(model.config.model_type)
    record = read_any_adapter_dir(dirs["a"], spec=spec, with_head=True, model=model.model_info())
    prepared = model.prepare_adapter_from_record(record, load_as="x")
    assert "x" not in model._adapterhub.adapters
    reference.add_adapter_from_record(record, load_as="x")
    model.add_adapter("x", config="lora")  # someone took the name meanwhile: refused at add time
    with pytest.raises(AdapterExistsError):
        model.add_prepared_adapter(prepared)
    model.delete_adapter("x")
    model.add_prepared_adapter(prepared)
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad(), model.adapter_setup("x"), reference.adapter_setup("x"):
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
        assert not torch.equal(model(ids).logits, fresh()(ids).logits)

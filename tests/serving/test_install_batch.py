"""Loads that are ready together go into the model in one model-thread job (one pause of the steps), a failing
install fails its own load alone, an adapter the install leaves as prepared is hashed before it goes in (with the
hash taken after it would have had), and a request's adapter loads while the request still waits for admission."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from adapterhub.serving import registry
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.serving.sources import SourceError


def _engine(directory: Any, dirs: dict[str, Any], **config: Any) -> ServingEngine:
    return ServingEngine.from_pretrained(
        str(directory), adapters={k: str(v) for k, v in dirs.items()}, config=EngineConfig(**config)
    )


def _count_model_jobs(engine: ServingEngine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the functions submitted to the engine's model thread, in order."""
    jobs: list[str] = []
    executor = engine._model_thread
    submit = executor.submit

    def counted(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        jobs.append(getattr(fn, "__name__", repr(fn)))
        return submit(fn, *args, **kwargs)

    monkeypatch.setattr(executor, "submit", counted)
    return jobs


async def _with_model_thread_blocked(engine: ServingEngine, names: list[str]) -> list[Any]:
    """Acquire each of ``names`` (one request each) while the model thread is busy, release it once every load is
    ready to install, and return each acquire's outcome (its ``LoadedAdapter`` or its exception)."""
    gate = threading.Event()
    blocked = asyncio.get_running_loop().run_in_executor(engine._model_thread, gate.wait, 10.0)
    acquires = [asyncio.create_task(engine.registry.acquire([n])) for n in names]
    deadline = time.monotonic() + 10
    while len(engine.registry._ready) < len(names):  # every load fetched, prepared, hashed and given room
        assert time.monotonic() < deadline, "the loads never became ready"
        await asyncio.sleep(0.005)
    gate.set()
    await blocked
    outcomes = await asyncio.gather(*acquires, return_exceptions=True)
    out: list[Any] = []
    for name, outcome in zip(names, outcomes, strict=True):
        if not isinstance(outcome, BaseException):
            engine.registry.release([name])
            outcome = outcome[name]
        out.append(outcome)
    return out


def test_loads_ready_together_go_in_with_one_model_thread_job(tiny_llama_loras, monkeypatch):
    directory, dirs = tiny_llama_loras
    engine = _engine(directory, dirs, max_loaded=2, max_wait_ms=1)
    jobs = _count_model_jobs(engine, monkeypatch)
    threads: list[str] = []
    swap_in = registry._swap_in

    def watched(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return swap_in(*args)

    monkeypatch.setattr(registry, "_swap_in", watched)

    async def main() -> tuple[list[Any], list[Any]]:
        await engine.start()
        await engine.load("c")  # full after a and b: c (unpinned, least recently used) is evicted by them
        del jobs[:]
        outcomes = await _with_model_thread_blocked(engine, ["a", "b"])
        alone = [await engine.generate(["the movie was"], adapter=n, max_new_tokens=5) for n in ("a", "b")]
        await engine.shutdown()
        return outcomes, alone

    outcomes, after = asyncio.run(main())
    assert jobs == ["wait", "_install_batch"]  # the blocker, then ONE install job for both loads
    assert len(threads) == 3 and len(set(threads)) == 1  # every install on the model thread (c, then a and b)
    assert [o.name for o in outcomes] == ["a", "b"]
    assert sorted(engine.registry.loaded) == ["a", "b"] and not engine.model.has_adapter("c")
    assert engine.registry.load_count == {"a": 1, "b": 1, "c": 1}

    reference = _engine(directory, dirs, max_loaded=3, max_wait_ms=1)

    async def one_by_one() -> list[Any]:
        await reference.start()
        out = [await reference.generate(["the movie was"], adapter=n, max_new_tokens=5) for n in ("a", "b")]
        hashes = [reference.registry.hashes[n] for n in ("a", "b")]
        await reference.shutdown()
        return [out, hashes]

    expected, hashes = asyncio.run(one_by_one())
    assert [o["token_ids"] for o in after] == [o["token_ids"] for o in expected]
    assert [o.hash for o in outcomes] == hashes


def test_the_install_job_holds_every_load_ready_when_it_runs(tiny_llama_loras, monkeypatch):
    """Two install jobs for three loads would mean one pause of the steps per load; the batched path takes all."""
    directory, dirs = tiny_llama_loras
    engine = _engine(directory, dirs, max_loaded=3, max_wait_ms=1)
    batches: list[int] = []
    install_batch = registry._install_batch

    def counted(model: Any, take: Any) -> Any:
        out = install_batch(model, take)
        batches.append(len(out))
        return out

    monkeypatch.setattr(registry, "_install_batch", counted)

    async def main() -> list[Any]:
        await engine.start()
        outcomes = await _with_model_thread_blocked(engine, ["a", "b", "c"])
        await engine.shutdown()
        return outcomes

    outcomes = asyncio.run(main())
    assert batches == [3]
    assert sorted(o.name for o in outcomes) == ["a", "b", "c"]
    assert all(engine.model.has_adapter(n) for n in "abc")


def test_a_load_ready_during_an_install_is_queued_behind_it_at_once(tiny_llama_loras, monkeypatch):
    """The next install job is submitted when its load is ready, not when the running job is back on the event loop
    (where the step loop could start a step in between)."""
    directory, dirs = tiny_llama_loras
    engine = _engine(directory, dirs, max_loaded=3, max_wait_ms=1)
    jobs = _count_model_jobs(engine, monkeypatch)
    installing, gate = threading.Event(), threading.Event()
    swap_in = registry._swap_in

    def slow_a(model: Any, victims: Any, source: Any, fetched: Any, prepared: Any, name: str) -> Any:
        if name == "a":
            installing.set()
            gate.wait(10.0)
        return swap_in(model, victims, source, fetched, prepared, name)

    monkeypatch.setattr(registry, "_swap_in", slow_a)

    async def main() -> tuple[list[str], list[Any]]:
        await engine.start()
        first = asyncio.create_task(engine.registry.acquire(["a"]))
        while not installing.is_set():
            await asyncio.sleep(0.002)
        second = asyncio.create_task(engine.registry.acquire(["b"]))
        deadline = time.monotonic() + 10
        while len(jobs) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
        submitted = list(jobs)  # while a's install still runs
        gate.set()
        out = await asyncio.gather(first, second)
        engine.registry.release(["a"])
        engine.registry.release(["b"])
        await engine.shutdown()
        return submitted, out

    submitted, out = asyncio.run(main())
    assert submitted == ["_install_batch", "_install_batch"]
    assert [sorted(o) for o in out] == [["a"], ["b"]] and sorted(engine.registry.loaded) == ["a", "b"]


def test_a_failing_install_fails_its_own_load_alone(tiny_llama_loras, monkeypatch):
    directory, dirs = tiny_llama_loras
    engine = _engine(directory, dirs, max_loaded=3, max_wait_ms=1)
    swap_in = registry._swap_in

    def failing(model: Any, victims: Any, source: Any, fetched: Any, prepared: Any, name: str) -> Any:
        if name == "b":
            raise SourceError("b cannot go in")
        return swap_in(model, victims, source, fetched, prepared, name)

    monkeypatch.setattr(registry, "_swap_in", failing)

    async def main() -> tuple[list[Any], Any]:
        await engine.start()
        outcomes = await _with_model_thread_blocked(engine, ["a", "b", "c"])
        monkeypatch.setattr(registry, "_swap_in", swap_in)
        again = await engine.registry.acquire(["b"])  # a later request tries again
        engine.registry.release(["b"])
        await engine.shutdown()
        return outcomes, again

    outcomes, again = asyncio.run(main())
    assert outcomes[0].name == "a" and outcomes[2].name == "c"
    assert isinstance(outcomes[1], SourceError) and "cannot go in" in str(outcomes[1])
    assert again["b"].hash and sorted(engine.registry.loaded) == ["a", "b", "c"]
    assert engine.metrics.adapter_events["load_error"] == 1
    assert engine.registry._installing == 0 and not engine.registry._ready


def test_a_lora_is_hashed_before_its_install_and_a_head_after(
    tiny_llama_loras, tiny_bert_dir, adapter_dirs, monkeypatch
):
    after_install: list[str] = []
    entry = registry._entry

    def counted(name: str, *args: Any) -> Any:
        after_install.append(name)
        return entry(name, *args)

    monkeypatch.setattr(registry, "_entry", counted)
    directory, dirs = tiny_llama_loras
    decoder = _engine(directory, dirs, max_loaded=2, max_wait_ms=1)
    encoder = _engine(tiny_bert_dir, adapter_dirs, max_loaded=2, max_wait_ms=1)

    async def load(engine: ServingEngine, name: str) -> Any:
        await engine.start()
        loaded = await engine.load(name)
        await engine.shutdown()
        return loaded

    lora = asyncio.run(load(decoder, "a"))
    assert after_install == []  # no head, placed when prepared: hashed on the I/O thread before the install
    module = decoder.model._store.adapters["a"]
    assert lora["hash"] == registry.describe_tensors(module, None).hash == decoder.registry.hashes["a"]
    with_head = asyncio.run(load(encoder, "cls3"))
    assert after_install == ["cls3"]  # its head goes into the model and out again: hashed after the install
    entry_cls3 = encoder.registry.loaded["cls3"]
    expected = registry.describe_tensors(encoder.model._store.adapters["cls3"], entry_cls3.head)
    assert with_head["hash"] == expected.hash and entry_cls3.memory_bytes == expected.memory_bytes


def test_a_request_waiting_for_admission_has_its_adapter_loaded_already(tiny_llama_loras):
    """The load starts when the request arrives, not when a sequence slot frees: with one slot busy, a request for
    another adapter waits in the engine's queue with its adapter in the model."""
    directory, dirs = tiny_llama_loras
    engine = _engine(directory, dirs, max_loaded=3, max_wait_ms=1, max_num_seqs=1)
    engine.generation.engine.stop_ids = frozenset()  # no eos: the first stream runs its full length
    hook = engine.model.register_forward_hook(lambda *args: time.sleep(0.005))

    async def main() -> tuple[dict[str, int], list[str], tuple[str, str], int]:
        await engine.start()
        first = await engine.open_generation([[3, 4, 5]], adapter="a", max_new_tokens=40)
        events = first.events()
        await events.__anext__()  # a is running in the only slot
        second = await engine.open_generation([[3, 4]], adapter="b", max_new_tokens=2)
        stats = engine.generation.engine.stats()
        loaded = sorted(engine.registry.loaded)
        statuses = (first.handles[0].status, second.handles[0].status)
        async for _ in events:
            pass
        done = await second.completions()
        await engine.shutdown()
        return stats, loaded, statuses, len(done[0].ids)

    try:
        stats, loaded, statuses, second_tokens = asyncio.run(main())
    finally:
        hook.remove()
    assert (
        statuses == ("running", "waiting") and stats["running"] == 1 and stats["waiting"] == 1
    )  # b waits...
    assert loaded == ["a", "b"]  # ...and its adapter is in the model already
    assert second_tokens == 2

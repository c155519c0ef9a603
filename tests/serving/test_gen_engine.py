"""The continuous-batching generation engine on a tiny random Llama (float32): every completion in a staggered,
mixed batch (LoRA adapters and base rows) is token-identical to ``model.generate`` (greedy) for that prompt with
that adapter alone; one forward pass per step whatever the mix (prefill fused into it); cancellation, admission
control and the errors raised at submit. The equality and forward-count tests run with one row per sequence and
with ``packed=True`` (every sequence in one row)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.errors import AdapterNotFoundError, ConfigError
from adapterhub.serving import GenerationEngine
from adapterhub.spec.composition import BatchSplit, Split, Stack, setup_from_json, setup_to_json
from tiny_models import DECODERS, NO_QKV, build, perturb

NEW = 7
LENGTHS = (3, 8, 5, 11, 4, 6, 9)


@pytest.fixture(scope="module")
def llama() -> Any:
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    for i, name in enumerate(("a", "b", "c")):
        model.add_adapter(name, "lora")
        perturb(model._store.adapters[name], std=0.2, seed=10 + i)
    model.add_adapter("loha", "loha")
    return model


@pytest.fixture(scope="module")
def methods() -> Any:
    """A Llama with adapters of every method the engine mixes (two of some, so that alike ones group)."""
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    for i, (name, method, std) in enumerate(METHODS):
        model.add_adapter(name, method)
        perturb(model._store.adapters[name], std=std, seed=20 + i)
    return model


METHODS = [
    ("lora", "lora", 0.2),
    ("dora", "dora", 0.2),
    ("ia3", "ia3", 0.3),
    ("pfeiffer", "pfeiffer", 0.05),
    ("houlsby", "houlsby", 0.05),
    ("dora2", "dora", 0.2),
    ("rslora", "lora[use_rslora=True]", 0.2),
    ("ia3b", "ia3", 0.3),
    ("pfeiffer2", "pfeiffer", 0.05),
]


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in LENGTHS]


_REFS: weakref.WeakKeyDictionary[Any, dict[tuple[tuple[int, ...], str | None, int], list[int]]] = (
    weakref.WeakKeyDictionary()
)


def reference(model: Any, prompt: list[int], adapter: str | None, new: int = NEW) -> list[int]:
    """``model.generate`` greedy for the prompt alone with the adapter alone active."""
    refs = _REFS.setdefault(model, {})
    key = (tuple(prompt), adapter, new)
    if key not in refs:
        with torch.no_grad(), model.adapter_setup(adapter):
            out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0)
        refs[key] = out[0, len(prompt) :].tolist()
    return refs[key]


def run_staggered(engine: GenerationEngine, plan: list[tuple[int, list[int], str | None]]) -> list[Any]:
    """Submit ``(at_step, prompt, adapter)`` at the given steps while the others decode; step until all end."""
    handles: list[Any] = [None] * len(plan)
    step = 0
    while any(h is None for h in handles) or any(h.status not in ("finished", "cancelled") for h in handles):
        for i, (at, prompt, adapter) in enumerate(plan):
            if handles[i] is None and at <= step:
                handles[i] = engine.submit(prompt, adapter=adapter, max_new_tokens=NEW)
        engine.step()
        step += 1
    return handles


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_base_rows_arriving_at_different_steps_equal_generate(llama, prompts, packed):
    engine = GenerationEngine(llama, max_num_seqs=8, packed=packed)
    plan = [(0, prompts[0], None), (0, prompts[1], None), (2, prompts[2], None), (3, prompts[3], None)]
    plan += [(3, prompts[4], None), (5, prompts[5], None)]
    handles = run_staggered(engine, plan)
    for handle, (_, prompt, _) in zip(handles, plan, strict=True):
        assert handle.result() == reference(llama, prompt, None)
    assert engine.stats() == {
        "waiting": 0,
        "running": 0,
        "cache_tokens": 0,
        "reserved_tokens": 0,
        "preempted": 0,
    }


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_mixed_lora_adapters_and_base_rows_equal_generate_alone(llama, prompts, packed):
    adapters = ["a", None, "b", "c", "a", None, "c"]
    for name in ("a", "b", "c"):  # the adapters change the completions
        assert any(reference(llama, p, name) != reference(llama, p, None) for p in prompts)
    engine = GenerationEngine(llama, max_num_seqs=8, packed=packed)
    plan = [(i // 2 * 2, prompts[i], adapters[i]) for i in range(len(prompts))]
    handles = run_staggered(engine, plan)
    for handle, (_, prompt, adapter) in zip(handles, plan, strict=True):
        assert handle.result() == reference(llama, prompt, adapter), adapter


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_one_forward_per_step_whatever_the_mix(llama, prompts, packed):
    calls = []
    hook = llama.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        engine = GenerationEngine(llama, max_num_seqs=8, packed=packed)
        first = [
            engine.submit(prompts[i], adapter=a, max_new_tokens=NEW) for i, a in enumerate(["a", None, "b"])
        ]
        infos = []
        for step in range(NEW):
            if step == 2:  # joins mid-decode: prefilled in the same forward as the others' decode
                late = engine.submit(prompts[3], adapter="c", max_new_tokens=NEW)
            before = len(calls)
            infos.append(engine.step())
            assert len(calls) == before + 1
        assert infos[0].prefill == 3 and infos[0].decode == 0
        assert infos[2].prefill == 1 and infos[2].decode == 3
        assert isinstance(infos[2].setup, Split if packed else BatchSplit)  # positions / rows per adapter
        assert infos[2].setup.children == ("a", "b", "c", None)
        while engine.step() is not None:
            pass
        assert len(calls) == NEW + 2  # the late one ran two steps after the first ones ended
    finally:
        hook.remove()
    for handle, (i, adapter) in zip([*first, late], [(0, "a"), (1, None), (2, "b"), (3, "c")], strict=True):
        assert handle.result() == reference(llama, prompts[i], adapter)


def test_cancel_mid_decode_frees_the_cache_and_leaves_the_others_unchanged(llama, prompts):
    engine = GenerationEngine(llama, max_num_seqs=8)
    keep = engine.submit(prompts[0], adapter="a", max_new_tokens=NEW)
    gone = engine.submit(prompts[3], adapter="b", max_new_tokens=NEW)
    other = engine.submit(prompts[1], max_new_tokens=NEW)
    for _ in range(3):
        engine.step()
    before = engine.stats()
    gone.cancel()
    after = engine.stats()
    assert gone.status == "cancelled" and after["running"] == before["running"] - 1
    assert after["cache_tokens"] == before["cache_tokens"] - (len(prompts[3]) + 2)
    assert after["reserved_tokens"] == before["reserved_tokens"] - (len(prompts[3]) + NEW)
    assert list(gone) == gone.tokens and len(gone.tokens) == 3  # the stream ends where it was cancelled
    assert gone.tokens == reference(llama, prompts[3], "b")[:3]
    assert keep.result() == reference(llama, prompts[0], "a")
    assert other.result() == reference(llama, prompts[1], None)
    assert engine.stats()["cache_tokens"] == 0


def test_admission_control_more_requests_than_max_num_seqs(llama, prompts):
    engine = GenerationEngine(llama, max_num_seqs=2, max_batch_tokens=16, max_cache_tokens=40)
    adapters = ["a", "b", None, "c", "a", None, "b"]
    handles = [
        engine.submit(p, adapter=a, max_new_tokens=NEW) for p, a in zip(prompts, adapters, strict=True)
    ]
    widest = 0
    while (info := engine.step()) is not None:
        widest = max(widest, info.prefill + info.decode)
        stats = engine.stats()
        assert stats["running"] <= 2 and stats["reserved_tokens"] <= 40
        assert info.new_tokens <= 16
    assert widest == 2
    for handle, prompt, adapter in zip(handles, prompts, adapters, strict=True):
        assert handle.result() == reference(llama, prompt, adapter)


def test_background_thread_and_streaming(llama, prompts):
    adapters = ["c", None, "a", "b"]
    results: dict[int, list[int]] = {}
    with GenerationEngine(llama, max_num_seqs=4) as engine:

        def client(i: int) -> None:
            handle = engine.submit(prompts[i], adapter=adapters[i], max_new_tokens=NEW)
            results[i] = list(handle)  # streamed token by token

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        blocking = engine.generate(prompts[4:6], adapters=["a", None], max_new_tokens=NEW)
    for i in range(4):
        assert results[i] == reference(llama, prompts[i], adapters[i])
    assert blocking == [reference(llama, prompts[4], "a"), reference(llama, prompts[5], None)]


def test_stop_ids_end_a_sequence_and_are_kept(llama, prompts):
    engine = GenerationEngine(llama)
    full = reference(llama, prompts[2], "a")
    stop = full[2]
    out = engine.generate([prompts[2]], adapters=["a"], max_new_tokens=NEW, stop_ids=[stop])[0]
    assert out == full[: full.index(stop) + 1]


def test_clear_errors_at_submit(llama, prompts):
    engine = GenerationEngine(llama, max_num_seqs=2, max_batch_tokens=10)
    with pytest.raises(AdapterNotFoundError, match=r"'aa'.*did you mean"):
        engine.submit(prompts[0], adapter="aa")
    with pytest.raises(
        ConfigError, match=r"loha adapter.*bottleneck, dora, ia3, lora, prefix_tuning, prompt_tuning"
    ):
        engine.submit(prompts[0], adapter="loha")
    with pytest.raises(ConfigError, match="empty"):
        engine.submit([])
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="max_new_tokens must be a positive integer"):
            engine.submit(prompts[0], max_new_tokens=bad)
    with pytest.raises(ConfigError, match="token ids"):
        engine.submit("the movie")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"Token ids must be integers in \[0, 99\)"):
        engine.submit([5, 120])
    with pytest.raises(ConfigError, match="max_batch_tokens=10"):
        engine.submit(prompts[3])
    with pytest.raises(ConfigError, match="one per prompt"):
        engine.generate(prompts[:2], adapters=["a"])
    with pytest.raises(AdapterNotFoundError):  # nothing of the batch was queued
        engine.generate(prompts[:2], adapters=["a", "zz"])
    assert engine.stats()["waiting"] == 0
    with pytest.raises(ConfigError, match="at least max_num_seqs"):
        GenerationEngine(llama, max_num_seqs=8, max_batch_tokens=4)
    with pytest.raises(ConfigError, match=r"adapterhub.init\(model\)"):
        GenerationEngine(build("llama", "causal_lm"))


@pytest.mark.parametrize("order", [("a", "b", None), (None, "a", "b"), ("a", None, "b")])
def test_batch_split_none_child_is_the_base(llama, prompts, order):
    """Base rows last run the LoRA rows grouped; elsewhere block by block: the same values either way."""
    ids = torch.tensor([prompts[0][:3], prompts[1][:3], prompts[2][:3]])
    setup = BatchSplit(*order, batch_sizes=[1, 1, 1])
    assert setup_from_json(setup_to_json(setup)) == setup
    with torch.no_grad():
        with llama.adapter_setup(setup):
            mixed = llama(input_ids=ids).logits
        alone = []
        for row, adapter in enumerate(order):
            with llama.adapter_setup(adapter):
                alone.append(llama(input_ids=ids[row : row + 1]).logits)
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=0, atol=1e-5)


def test_none_is_a_child_of_batch_split_and_split_only():
    """BatchSplit's base rows and Split's base positions (a packed row's base segment); never inside a Stack."""
    assert BatchSplit("a", None, batch_sizes=[1, 1]).children == ("a", None)
    assert Split("a", None, split_index=2).children == ("a", None)
    with pytest.raises(ConfigError, match="Stack takes adapter names or blocks"):
        Stack("a", None)  # type: ignore[arg-type]


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
def test_every_mixable_method_per_row_equals_generate_alone(methods, prompts, packed):
    """LoRA, rsLoRA, DoRA, (IA)³ and Pfeiffer / Houlsby bottleneck adapters and base rows in one batch, one
    joining at each step: each completion equals generate() with that adapter alone."""
    names: list[str | None] = [name for name, _, _ in METHODS] + [None]
    generator = torch.Generator().manual_seed(9)
    lengths = [3 + (5 * i) % 9 for i in range(len(names))]
    batch = [torch.randint(3, 99, (n,), generator=generator).tolist() for n in lengths]
    for prompt, name in zip(batch, names, strict=True):
        expected = reference(methods, prompt, name)
        assert name is None or expected != reference(methods, prompt, None), name  # the adapter matters
    engine = GenerationEngine(methods, max_num_seqs=16, packed=packed)
    handles = run_staggered(engine, [(i, p, n) for i, (p, n) in enumerate(zip(batch, names, strict=True))])
    for handle, prompt, name in zip(handles, batch, names, strict=True):
        assert handle.result() == reference(methods, prompt, name), name


@pytest.mark.parametrize(
    "order", [("lora", "dora"), ("pfeiffer", "houlsby", None), ("lora", "rslora", "ia3")]
)
def test_batch_split_of_mixed_methods_equals_each_alone(methods, prompts, order):
    """A subclass of a method (DoRA of LoRA) is never run by its parent's grouped computation."""
    ids = torch.tensor([p[:3] for p in prompts[: len(order)]])
    with torch.no_grad():
        with methods.adapter_setup(BatchSplit(*order, batch_sizes=[1] * len(order))):
            mixed = methods(input_ids=ids).logits
        alone = []
        for row, adapter in enumerate(order):
            with methods.adapter_setup(adapter):
                alone.append(methods(input_ids=ids[row : row + 1]).logits)
    torch.testing.assert_close(mixed, torch.cat(alone), rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", DECODERS)
def test_decoder_architectures_equal_generate(arch):
    """Absolute (GPT-2) and rotary positions, grouped-query attention, fused projections, sliding windows (Gemma
    2/3 with a window of 24: requests of up to 12 tokens)."""
    model = build(arch, "causal_lm", **({"sliding_window": 24} if arch in ("gemma2", "gemma3_text") else {}))
    adapterhub.init(model)
    names: list[str | None] = [None, "bottleneck"]
    model.add_adapter("bottleneck", "pfeiffer")
    perturb(model._store.adapters["bottleneck"], std=0.05, seed=4)
    if arch not in NO_QKV:
        model.add_adapter("lora", "lora")
        perturb(model._store.adapters["lora"], std=0.2, seed=3)
        names.append("lora")
    generator = torch.Generator().manual_seed(0)
    batch = [torch.randint(3, 99, (n,), generator=generator).tolist() for n in (3, 5, 4, 2)]
    adapters = [names[i % len(names)] for i in range(len(batch))]
    engine = GenerationEngine(model)
    handles = []
    for prompt, adapter in zip(batch, adapters, strict=True):
        handles.append(engine.submit(prompt, adapter=adapter, max_new_tokens=4))
        engine.step()
    for handle, prompt, adapter in zip(handles, batch, adapters, strict=True):
        assert handle.result() == reference(model, prompt, adapter, new=4), adapter
    if arch in ("gemma2", "gemma3_text"):
        with pytest.raises(ConfigError, match=r"window 24.*up to 12 tokens"):
            engine.submit(batch[0], max_new_tokens=10)


def test_an_adapter_removed_mid_request_fails_that_request_only(prompts):
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    for i, name in enumerate(("a", "gone")):
        model.add_adapter(name, "lora")
        perturb(model._store.adapters[name], std=0.2, seed=10 + i)
    engine = GenerationEngine(model)
    keep = engine.submit(prompts[0], adapter="a", max_new_tokens=NEW)
    lost = engine.submit(prompts[1], adapter="gone", max_new_tokens=NEW)
    base = engine.submit(prompts[2], max_new_tokens=NEW)
    engine.step()
    model.delete_adapter("gone")
    with pytest.raises(AdapterNotFoundError, match="removed from the model"):
        lost.result()
    assert lost.status == "failed" and len(lost.tokens) == 1
    assert keep.result() == reference(model, prompts[0], "a")
    assert base.result() == reference(model, prompts[2], None)
    assert engine.stats() == {
        "waiting": 0,
        "running": 0,
        "cache_tokens": 0,
        "reserved_tokens": 0,
        "preempted": 0,
    }


def test_async_iteration_streams_the_same_tokens(llama, prompts):
    engine = GenerationEngine(llama)
    with pytest.raises(ConfigError, match=r"engine.start\(\)"):
        engine.submit(prompts[0]).__aiter__()

    async def stream(handle: Any) -> list[int]:
        return [token async for token in handle]

    async def main(engine: GenerationEngine) -> list[list[int]]:
        handles = [engine.submit(prompts[i], adapter=a, max_new_tokens=NEW) for i, a in ((1, "b"), (2, None))]
        return list(await asyncio.gather(*(stream(h) for h in handles)))

    with GenerationEngine(llama) as running:
        got = asyncio.run(main(running))
    assert got == [reference(llama, prompts[1], "b"), reference(llama, prompts[2], None)]


def test_attention_without_a_4d_mask_is_refused(llama):
    before = llama.config._attn_implementation
    llama.config._attn_implementation = "flash_attention_2"
    try:
        with pytest.raises(ConfigError, match="'sdpa' or 'eager'"):
            GenerationEngine(llama)
    finally:
        llama.config._attn_implementation = before
    assert GenerationEngine(llama).model is llama


def test_the_slot_pool_is_written_in_place_and_dropped_when_idle(llama, prompts):
    engine = GenerationEngine(llama, stop_ids=[], max_num_seqs=3)
    handles = [engine.submit(prompts[i], max_new_tokens=NEW) for i in range(3)]
    engine.step()
    pool = engine._pool
    assert [h._seq.kv.slot for h in handles] == [0, 1, 2] and pool.keys
    for handle, i in zip(handles, range(3), strict=True):
        with torch.no_grad():
            own = llama(torch.tensor([prompts[i]]), use_cache=True)
        kv = handle._seq.kv
        assert kv.length == LENGTHS[i]
        for layer, cached in enumerate(own.past_key_values.layers):
            torch.testing.assert_close(kv.keys[layer][:, : kv.length], cached.keys[0], atol=1e-5, rtol=0)
    handles[1].cancel()
    late = engine.submit(prompts[4], max_new_tokens=NEW)
    engine.step()  # the freed slot is taken by the next admission; the pool stays while others run
    assert late._seq.kv.slot == 1 and pool.keys
    while engine.step() is not None:
        pass
    assert pool.keys == [] and pool.width == 0  # nothing running: the memory went back
    alone = engine.generate([prompts[0], prompts[4]], max_new_tokens=NEW)
    assert [handles[0].result(), late.result()] == alone
    again = engine.submit(prompts[3], max_new_tokens=2)
    assert again.result() == engine.generate([prompts[3]], max_new_tokens=2)[0]

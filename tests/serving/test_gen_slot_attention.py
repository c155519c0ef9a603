"""Attention per slot for the engine's packed steps (``serving/gen_slot_attention``): equal to the block-diagonal
mask over gathered keys (decode segments in consecutive and scattered slots, prompts with and without a cached
history, GQA); the engine uses it on SDPA models and the mask path on eager ones, both token-identical to
``generate``; the model's attention implementation is restored after each step (also when two steps overlap), and
calls from other contexts during a step run the model's own attention."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.runtime.packing import PackedRow
from adapterhub.serving import GenerationEngine
from adapterhub.serving import gen_slot_attention as slot_attention
from tiny_models import build, perturb


def dense_reference(query, keys, values, slots, cached, lengths):
    """Block-diagonal mask over every segment's gathered keys (the mask path of ``gen_packed``)."""
    row = PackedRow([None] * len(lengths), lengths, cached)
    key_seq, key_pos = row.key_layout()  # (C + T,)
    heads = keys.shape[0]
    key_pos_total = key_pos.clone()
    slot_of = torch.tensor(slots)[key_seq]  # (C + T,)
    k = keys[:, slot_of, key_pos_total][None]  # (1, H_kv, C + T, d)
    v = values[:, slot_of, key_pos_total][None]
    mask = row.attention_mask(torch.float32)  # (1, 1, T, C + T)
    groups = query.shape[1] // heads
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    out = torch.nn.functional.scaled_dot_product_attention(query, k, v, attn_mask=mask)  # (1, H, T, d)
    return out.transpose(1, 2)  # (1, T, H, d)


@pytest.mark.parametrize(
    ("slots", "cached", "lengths"),
    [
        ([0, 1, 2, 3], [4, 7, 2, 5], [1, 1, 1, 1]),  # decode only, consecutive slots: a view of the pool
        ([3, 0, 2], [4, 7, 2], [1, 1, 1]),  # decode only, scattered slots: one gather
        ([1, 4, 0, 3], [5, 0, 3, 6], [1, 6, 4, 1]),  # decode, a new prompt, a chunk after a cached history
        ([2], [0], [5]),  # one prompt alone
    ],
    ids=["decode-consecutive", "decode-scattered", "mixed", "prompt"],
)
def test_slot_attention_equals_the_block_diagonal_mask(slots, cached, lengths):
    generator = torch.Generator().manual_seed(0)
    heads, kv_heads, dim, width = 4, 2, 8, 16
    keys = torch.randn((kv_heads, 5, width, dim), generator=generator)  # (H_kv, slots, width, d)
    values = torch.randn((kv_heads, 5, width, dim), generator=generator)
    query = torch.randn((1, heads, sum(lengths), dim), generator=generator)
    plan = slot_attention.build_plan(slots, cached, lengths, torch.device("cpu"))
    decoding = [s for s, n in zip(slots, lengths, strict=True) if n == 1]
    consecutive = decoding == list(range(decoding[0], decoding[0] + len(decoding))) if decoding else True
    assert (plan.decode_slots is None) == consecutive
    assert plan.decode_all is all(n == 1 for n in lengths)  # decode only: no gather, no scatter of the row
    out = slot_attention.slot_attention(plan, query, keys, values, scaling=None)
    torch.testing.assert_close(out, dense_reference(query, keys, values, slots, cached, lengths))


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in (4, 9, 6, 3, 7)]


def make(attention: str) -> Any:
    model = build("llama", "causal_lm", seed=0)
    model.set_attn_implementation(attention)
    adapterhub.init(model)
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, "lora")
        perturb(model._store.adapters[name], std=0.2, seed=10 + i)
    return model


def reference(model: Any, prompt: list[int], adapter: Any, new: int) -> list[int]:
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None
        )
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_engine_attends_per_slot_on_sdpa_and_by_mask_on_eager(attention, prompts, monkeypatch):
    model = make(attention)
    engine = GenerationEngine(model, max_num_seqs=4, packed=True, stop_ids=[])
    assert engine.per_slot is (attention == "sdpa")
    calls = []
    original = slot_attention.slot_attention
    monkeypatch.setattr(
        slot_attention, "slot_attention", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    adapters = ["a", None, "b", "a", "b"]
    handles = []
    for step in range(40):
        if step < len(prompts):  # one joins per step while the others decode
            handles.append(engine.submit(prompts[step], adapter=adapters[step], max_new_tokens=6))
        if engine.step() is None:
            break
        assert model.config._attn_implementation == attention  # restored after every step
    assert (len(calls) > 0) is (attention == "sdpa")
    for handle, prompt, adapter in zip(handles, prompts, adapters, strict=True):
        assert handle.result() == reference(model, prompt, adapter, 6)


def test_overlapping_steps_keep_the_switch_and_other_calls_run_the_models_attention(prompts):
    model = make("sdpa")
    configs = slot_attention.configs_of(model)
    plan = slot_attention.build_plan([0], [0], [3], torch.device("cpu"))
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        expected = model(ids).logits
    seen: list[torch.Tensor] = []

    def other_caller() -> None:  # a thread with no plan: the model's own attention and mask
        with torch.no_grad():
            seen.append(model(ids).logits)

    with slot_attention.active(configs, plan):
        with slot_attention.active(configs, plan):  # a second engine's step overlapping the first
            assert model.config._attn_implementation == slot_attention.NAME
        assert model.config._attn_implementation == slot_attention.NAME  # still held by the first
        thread = threading.Thread(target=other_caller)
        thread.start()
        thread.join()
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(seen[0], expected, atol=0, rtol=0)


def test_a_packed_rows_keys_written_in_order_equal_the_gathered_write():
    """``SlotCache(in_order=True)`` (a packed step: the row's tokens are the write's sources in order) writes every
    segment's new keys and values at its slot's next positions, as the gathered write of the same index does."""
    from adapterhub.serving.kv_cache import KVPool, SequenceKV, SlotCache, write_index

    generator = torch.Generator().manual_seed(3)
    lengths, cached, slots = [1, 4, 1, 2], [3, 0, 5, 2], [2, 0, 3, 1]
    new_keys = torch.randn((1, 2, sum(lengths), 8), generator=generator)  # (1, kv_heads, T, d)
    new_values = torch.randn((1, 2, sum(lengths), 8), generator=generator)
    pools = []
    for in_order in (False, True):
        pool = KVPool(4)
        caches = []
        for slot, length in zip(slots, cached, strict=True):
            kv = SequenceKV(capacity=16, length=length, pool=pool, slot=slot)
            caches.append(kv)
        pool.reserve(8)
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        columns = [range(s, s + n) for s, n in zip(starts, lengths, strict=True)]
        write = write_index(caches, columns, [0] * len(caches), pool.width, torch.device("cpu"))
        cache = SlotCache(pool, write, seen=sum(cached), whole=True, in_order=in_order)
        keys, values = cache.update(new_keys, new_values, 0)  # (kv_heads, slots, width, d)
        for i, (slot, length) in enumerate(zip(slots, cached, strict=True)):
            fed = slice(starts[i], starts[i] + lengths[i])
            torch.testing.assert_close(keys[:, slot, length : length + lengths[i]], new_keys[0, :, fed])
            torch.testing.assert_close(values[:, slot, length : length + lengths[i]], new_values[0, :, fed])
        pools.append((keys.clone(), values.clone()))
    torch.testing.assert_close(pools[0], pools[1])

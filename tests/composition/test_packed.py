"""A packed forward (``runtime/packing``): several sequences in ONE row ``(1, T)``, each segment with its own adapter
(LoRA, DoRA, (IA)³, a bottleneck adapter, a Stack, or none), block-diagonal causal attention and positions that
restart per sequence, equals each sequence's own forward (logits and the keys/values it writes), with and without
cached tokens in front; methods that cannot run per token are refused with their reason."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import DynamicCache

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.runtime.packing import PackedRow, check_packable
from adapterhub.spec.composition import Split, Stack
from tiny_models import build, perturb

ATOL = 1e-5
LENGTHS = (5, 3, 7, 4, 6, 2)
SETUPS: list[Any] = ["lora", "dora", None, "ia3", "pfeiffer", Stack("lora", "pfeiffer")]


@pytest.fixture(scope="module")
def llama() -> Any:
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    for i, (name, method, std) in enumerate(
        [("lora", "lora", 0.2), ("dora", "dora", 0.2), ("ia3", "ia3", 0.3), ("pfeiffer", "pfeiffer", 0.05)]
    ):
        model.add_adapter(name, method)
        perturb(model._store.adapters[name], std=std, seed=40 + i)
    model.add_adapter("prefix", "prefix_tuning[prefix_length=3]")
    return model


def sequences(lengths: tuple[int, ...], seed: int = 5) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in lengths]


def alone(model: Any, ids: list[int], setup: Any) -> tuple[torch.Tensor, Any]:
    with torch.no_grad(), model.adapter_setup(setup):
        out = model(torch.tensor([ids]), use_cache=True)
    return out.logits[0], out.past_key_values  # (n, V)


def test_setup_merges_adjacent_segments_into_a_split():
    row = PackedRow(["a", "a", None, "b"], [2, 3, 1, 4])
    assert row.setup == Split("a", None, "b", split_index=[5, 6])
    assert PackedRow(["a", "a"], [2, 3]).setup == "a"
    assert row.position_ids().tolist() == [[0, 1, 0, 1, 2, 0, 0, 1, 2, 3]]
    assert row.last().tolist() == [1, 4, 5, 9]


def test_mask_is_block_diagonal_causal_over_cached_and_new_keys():
    row = PackedRow(["a", "b"], [2, 1], cached=[1, 2])
    mask = row.attention_mask(torch.float32)  # (1, 1, 3, 3 + 3): keys a0 | b0 b1 | a1 a2 | b2
    visible = (mask[0, 0] == 0).int().tolist()
    assert visible == [[1, 0, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0], [0, 1, 1, 0, 0, 1]]


def test_packed_prefill_equals_each_sequence_alone(llama: Any):
    seqs = sequences(LENGTHS)
    row = PackedRow(SETUPS, LENGTHS)
    ids = torch.tensor([[t for s in seqs for t in s]])  # (1, T)
    with torch.no_grad(), llama.adapter_setup(row.setup):
        out = llama(
            input_ids=ids,
            position_ids=row.position_ids(),
            attention_mask=row.attention_mask(torch.float32),
            use_cache=True,
        )
    for seq, setup, start in zip(seqs, SETUPS, row.starts, strict=True):
        logits, cache = alone(llama, seq, setup)
        n = len(seq)
        torch.testing.assert_close(out.logits[0, start : start + n], logits, atol=ATOL, rtol=0)
        for packed_layer, own in zip(out.past_key_values.layers, cache.layers, strict=True):
            torch.testing.assert_close(
                packed_layer.keys[..., start : start + n, :], own.keys, atol=ATOL, rtol=0
            )
            torch.testing.assert_close(
                packed_layer.values[..., start : start + n, :], own.values, atol=ATOL, rtol=0
            )
    assert not torch.allclose(out.logits[0, :5], alone(llama, seqs[0], None)[0], atol=1e-3)  # adapters act


def test_packed_continuation_over_cached_tokens_equals_each_sequence_alone(llama: Any):
    """Sequences with cached prompts continue in one row (a decode step and prefill chunks together): the cache
    is every sequence's cached keys in segment order, the mask keeps each to its own."""
    firsts, nexts = sequences((4, 6, 3, 5), seed=8), sequences((1, 3, 1, 2), seed=9)
    setups: list[Any] = ["lora", None, "ia3", "dora"]
    caches = [alone(llama, first, setup)[1] for first, setup in zip(firsts, setups, strict=True)]
    layers = [
        (
            torch.cat([c.layers[layer].keys for c in caches], dim=2),  # (1, kv_heads, C, head_dim)
            torch.cat([c.layers[layer].values for c in caches], dim=2),
        )
        for layer in range(len(caches[0].layers))
    ]
    row = PackedRow(setups, [len(n) for n in nexts], cached=[len(f) for f in firsts])
    with torch.no_grad(), llama.adapter_setup(row.setup):
        out = llama(
            input_ids=torch.tensor([[t for s in nexts for t in s]]),
            position_ids=row.position_ids(),
            attention_mask=row.attention_mask(torch.float32),
            past_key_values=DynamicCache(ddp_cache_data=layers),
            use_cache=True,
        )
    for first, nxt, setup, start in zip(firsts, nexts, setups, row.starts, strict=True):
        full = alone(llama, first + nxt, setup)[0]  # (n_first + n_next, V)
        torch.testing.assert_close(
            out.logits[0, start : start + len(nxt)], full[len(first) :], atol=ATOL, rtol=0
        )


def test_methods_that_run_per_row_are_refused_with_their_reason(llama: Any):
    adapters = llama._store.adapters
    check_packable(Stack("lora", "pfeiffer"), adapters)
    with pytest.raises(ConfigError, match="prefix keys and values are prepended"):
        check_packable("prefix", adapters)
    with (
        pytest.raises(ConfigError, match="prefix_tuning"),
        llama.adapter_setup(Split("lora", "prefix", split_index=2)),
    ):
        pass


def test_attention_without_a_4d_mask_is_refused():
    from types import SimpleNamespace

    from adapterhub.runtime.packing import check_packed_model

    check_packed_model(SimpleNamespace(config=SimpleNamespace(_attn_implementation="adapterhub_sdpa")))
    with pytest.raises(ConfigError, match=r"'flash_attention_2'.*set_attn_implementation"):
        check_packed_model(SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2")))


def test_alike_loras_on_token_slices_run_as_one_grouped_computation(monkeypatch):
    """LoRA adapters of different ranks and base segments in one row: one masked computation per point
    (``LoRAAdapter.split_grouped``), equal to each sequence alone."""
    from adapterhub.methods.lora import LoRAAdapter

    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    for i, config in enumerate(("lora[r=2]", "lora[r=4]", "lora[r=8,alpha=4]")):
        model.add_adapter(f"l{i}", config)
        perturb(model._store.adapters[f"l{i}"], std=0.2, seed=70 + i)
    grouped: list[int] = []
    original = LoRAAdapter.split_grouped

    def spy(self: Any, modules: Any, *args: Any) -> Any:
        out = original(self, modules, *args)
        grouped.append(0 if out is None else len(modules))
        return out

    monkeypatch.setattr(LoRAAdapter, "split_grouped", spy)
    setups: list[Any] = ["l0", None, "l1", "l2", None]
    lengths = (4, 3, 5, 2, 6)
    seqs = sequences(lengths, seed=11)
    row = PackedRow(setups, lengths)
    with torch.no_grad(), model.adapter_setup(row.setup):
        out = model(
            input_ids=torch.tensor([[t for s in seqs for t in s]]),
            position_ids=row.position_ids(),
            attention_mask=row.attention_mask(torch.float32),
        )
    assert grouped and set(grouped) == {3}  # every LoRA point: the three adapters at once
    grouped.clear()
    for seq, setup, start in zip(seqs, setups, row.starts, strict=True):
        own = alone(model, seq, setup)[0]
        torch.testing.assert_close(out.logits[0, start : start + len(seq)], own, atol=ATOL, rtol=0)
    assert not grouped  # alone: no Split

"""Grouped LoRA at a point (``methods/lora_grouped``): a Split of token slices runs stacked (equal slices end to
end, e.g. a packed decode step: two batched matmuls) or side by side (a ``(T, R)`` mask), a BatchSplit of row
blocks stacked (equal or unequal blocks); every layout equals the same setup run slice by slice (the interpreter's
fallback) to 1e-5, also across steps whose mix changes and after a weight changes in place under one
``WeightCache``, and layers that compute otherwise (AdaLoRA, DoRA, VeRA, LoHa) are never grouped."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

import adapterhub
from adapterhub.methods import grouped_weights, lora_grouped
from adapterhub.spec.composition import BatchSplit, Split
from method_checks import one_by_one, packed_logits
from tiny_models import build, perturb

ATOL = 1e-5
NAMES = [f"l{i}" for i in range(8)]


@pytest.fixture(scope="module")
def model() -> Any:
    llama = build("llama", "causal_lm", seed=0)
    adapterhub.init(llama)
    for i, name in enumerate(NAMES):
        llama.add_adapter(name, "lora[r=8,alpha=4]" if i % 2 else "lora[r=8,alpha=16]")
        perturb(llama._store.adapters[name], std=0.2, seed=60 + i)
    llama.add_adapter("small", "lora[r=2]")
    perturb(llama._store.adapters["small"], std=0.2, seed=90)
    return llama


@pytest.fixture
def layouts(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts what ran, per point: ``slots`` (factors stacked afresh: no plan runs without a cache), ``bmm`` (the
    stacked layout's batched matmuls), ``masked`` (the side-by-side layout's mask)."""
    seen: Counter[str] = Counter()
    originals = {
        "slots": lora_grouped.stacked,
        "bmm": lora_grouped._in_slots,
        "masked": lora_grouped._slice_mask,
    }
    names = {"slots": "stacked", "bmm": "_in_slots", "masked": "_slice_mask"}
    for what, original in originals.items():

        def spy(*args: Any, _what: str = what, _original: Any = original) -> Any:
            seen[_what] += 1
            return _original(*args)

        monkeypatch.setattr(lora_grouped, names[what], spy)
    return seen


@pytest.mark.parametrize("count", [4, 8], ids=["R=d_in", "R>d_in"])
def test_a_decode_step_of_different_adapters_runs_stacked_and_equals_slice_by_slice(
    model, layouts, monkeypatch, count
):
    setups, lengths = NAMES[:count], [1] * count
    out = packed_logits(model, setups, lengths)
    assert layouts == {"slots": 4, "bmm": 4}  # q and v of both layers, never masked (8 x r 8 > d_in 32 too)
    reference = one_by_one(monkeypatch, lambda: packed_logits(model, setups, lengths))
    torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)


def test_equal_slices_of_several_tokens_and_several_rows_run_stacked(model, layouts, monkeypatch):
    generator = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 99, (2, 9), generator=generator)
    setup = Split("l0", "l3", "l5", split_index=[3, 6])  # 2 rows x 3 slices of 3 positions

    def run() -> torch.Tensor:
        with torch.no_grad(), model.adapter_setup(setup):
            return model(input_ids=ids).logits  # type: ignore[no-any-return]

    out = run()
    assert layouts == {"slots": 4, "bmm": 4}
    torch.testing.assert_close(out, one_by_one(monkeypatch, run), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("setups", "lengths", "ran"),
    [
        (["l0", "l1", "l2"], [2, 1, 3], {"slots": 4, "masked": 4}),  # unequal slices (a chunk beside decodes)
        (["l0", None, "l1"], [1, 1, 1], {"slots": 4, "masked": 4}),  # a sequence with no adapter between
        (["l0", "small", "l1"], [1, 1, 1], {"masked": 4}),  # ranks that differ: joined side by side
    ],
    ids=["unequal", "base-between", "ranks"],
)
def test_other_slices_run_side_by_side_and_equal_slice_by_slice(
    model, layouts, monkeypatch, setups, lengths, ran
):
    out = packed_logits(model, setups, lengths)
    assert layouts == ran
    reference = one_by_one(monkeypatch, lambda: packed_logits(model, setups, lengths))
    torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("sizes", "ran"),
    [([2, 2, 2], {"slots": 4, "bmm": 4}), ([1, 3, 2], {"slots": 4})],
    ids=["equal", "unequal"],
)
def test_batch_split_row_blocks_run_stacked_and_equal_block_by_block(model, layouts, monkeypatch, sizes, ran):
    generator = torch.Generator().manual_seed(8)
    ids = torch.randint(3, 99, (6, 4), generator=generator)
    setup = BatchSplit("l1", "l4", "l6", batch_sizes=sizes)

    def run() -> torch.Tensor:
        with torch.no_grad(), model.adapter_setup(setup):
            return model(input_ids=ids).logits  # type: ignore[no-any-return]

    out = run()
    assert layouts == ran
    torch.testing.assert_close(out, one_by_one(monkeypatch, run), atol=ATOL, rtol=0)


def test_a_changing_mix_and_an_in_place_weight_change_under_one_cache_equal_no_cache(model, monkeypatch):
    """Steps under one ``WeightCache`` as the engine runs them: the mix slides by one adapter per step (one copy
    per point into the slot of the adapter that left), the same adapters in another order (reused, slots
    permuted), a mix of another size (under the pass's plan: the held adapters kept, the new one copied), then an adapter's weights written in place (the forward pass's plan
    sees the adapter changed and copies its slot again at each of its points): each step equals an uncached run
    and the slice-by-slice reference."""
    cache = grouped_weights.WeightCache()
    mixes = [NAMES[s : s + 4] for s in range(4)] + [NAMES[6:2:-1], NAMES[2:5]]

    def step(mix: list[str]) -> torch.Tensor:
        with grouped_weights.caching(cache):
            return packed_logits(model, mix, [1] * len(mix))

    outs = [step(mix) for mix in mixes]
    assert (cache.builds, cache.copies, cache.hits) == (4, 4 * 4, 4)  # 4 points: q, v of 2 layers
    for mix, out in zip(mixes, outs, strict=True):
        torch.testing.assert_close(out, packed_logits(model, mix, [1] * len(mix)), atol=ATOL, rtol=0)
        reference = one_by_one(monkeypatch, lambda m=mix: packed_logits(model, m, [1] * len(m)))
        torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)
    lora_b = model._store.adapters["l3"].layers["0"]["v"].lora_B  # (q is moot: one token attends to itself)
    before = lora_b.detach().clone()
    try:
        with torch.no_grad():
            lora_b.mul_(-2.0)
        changed = step(mixes[-1])
        assert (cache.builds, cache.copies, cache.hits) == (4, 16 + 4, 4)
        assert not torch.allclose(changed, outs[-1])
        reference = one_by_one(monkeypatch, lambda: packed_logits(model, mixes[-1], [1] * 3))
        torch.testing.assert_close(changed, reference, atol=ATOL, rtol=0)
    finally:
        with torch.no_grad():
            lora_b.copy_(before)


def test_slots_follow_a_reloaded_adapter_and_masked_slices_use_the_slot_order(monkeypatch):
    """An adapter deleted and added again under its name (new tensors) takes a slot afresh; side-by-side slices
    (a prefill chunk beside decodes) read the slot stacks in their permuted order."""
    llama = build("llama", "causal_lm", seed=0)
    adapterhub.init(llama)
    for i, name in enumerate(("a", "b", "c")):
        llama.add_adapter(name, "lora")
        perturb(llama._store.adapters[name], std=0.2, seed=30 + i)
    cache = grouped_weights.WeightCache()
    steps = [(["a", "b", "c"], [1, 1, 1]), (["c", "a", "b"], [2, 1, 1]), (["b", "c", "a"], [1, 3, 1])]
    for setups, lengths in steps:
        with grouped_weights.caching(cache):
            out = packed_logits(llama, setups, lengths)
        reference = one_by_one(monkeypatch, lambda s=setups, n=lengths: packed_logits(llama, s, n))
        torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)
    assert cache.builds == 4 and cache.copies == 0
    llama.delete_adapter("b")
    llama.add_adapter("b", "lora")
    perturb(llama._store.adapters["b"], std=0.2, seed=99)
    with grouped_weights.caching(cache):
        out = packed_logits(llama, ["a", "b", "c"], [1, 1, 1])
    assert cache.builds == 4 and cache.copies == 4
    reference = one_by_one(monkeypatch, lambda: packed_logits(llama, ["a", "b", "c"], [1, 1, 1]))
    torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("config", ["adalora[init_r=4,target_r=2]", "dora", "vera", "loha"])
def test_layers_that_compute_otherwise_are_never_grouped_in_a_split(monkeypatch, config):
    """LoRA's subclasses whose layers compute otherwise (AdaLoRA's ``B E A``, DoRA's magnitude, VeRA, LoHa) run a
    Split of their adapters slice by slice and equal each slice through its own adapter (before, an all-DoRA or
    all-AdaLoRA row ran plain LoRA's math, and VeRA / LoHa raised)."""
    llama = build("llama", "causal_lm", seed=0)
    adapterhub.init(llama)
    for i, name in enumerate(("s0", "s1")):
        llama.add_adapter(name, config)
        perturb(llama._store.adapters[name], std=0.2, seed=80 + i)
    calls: list[Any] = []
    monkeypatch.setattr(lora_grouped, "stacked", lambda *a: calls.append(a))
    out = packed_logits(llama, ["s0", "s1"], [1, 1])
    assert not calls
    reference = one_by_one(monkeypatch, lambda: packed_logits(llama, ["s0", "s1"], [1, 1]))
    torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)

"""The per-forward-pass plan of grouped LoRA (``methods/grouped_plan`` via ``grouped_weights.planned``): under a
``WeightCache`` with gradients off, each adapter of a mix is checked once per forward pass and the points read slot
stacks keyed by (adapter, generation). Every step equals the slice-by-slice reference (the interpreter's fallback)
to 1e-5 across changes between steps: a weight written in place, a parameter replaced, a scale changed, an adapter
deleted and added again, a mix that grows by one; without a cache, with gradients on or with active dropout no plan
runs."""

from __future__ import annotations

import copy
import gc
from typing import Any

import pytest
import torch
from torch import nn

import adapterhub
from adapterhub.methods import grouped_plan, grouped_weights, lora_grouped
from adapterhub.runtime.packing import PackedRow
from adapterhub.spec.composition import BatchSplit, Split
from method_checks import one_by_one as reference
from method_checks import packed_logits
from tiny_models import build, perturb

ATOL = 1e-5
NAMES = [f"p{i}" for i in range(6)]
POINTS = 4  # q, v of the tiny Llama's 2 layers


def make_model() -> Any:
    llama = build("llama", "causal_lm", seed=0)
    adapterhub.init(llama)
    for i, name in enumerate(NAMES):
        llama.add_adapter(name, "lora[r=4,alpha=8]" if i % 2 else "lora[r=4,alpha=16]")
        perturb(llama._store.adapters[name], std=0.2, seed=40 + i)
    return llama


@pytest.fixture
def model() -> Any:
    return make_model()


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts ``planned`` (points that read plan stacks), ``stacked`` (points that stacked the factors afresh: no
    plan) and ``signatures`` (adapters checked)."""
    counts = {"planned": 0, "stacked": 0, "signatures": 0}
    planned, stacked, signature = (
        lora_grouped._planned,
        lora_grouped.stacked,
        grouped_plan._Skeleton.signature,
    )

    def spy_planned(*args: Any) -> Any:
        out = planned(*args)
        counts["planned"] += out is not None
        return out

    def spy_stacked(*args: Any) -> Any:
        counts["stacked"] += 1
        return stacked(*args)

    def spy_signature(*args: Any) -> Any:
        counts["signatures"] += 1
        return signature(*args)

    monkeypatch.setattr(lora_grouped, "_planned", spy_planned)
    monkeypatch.setattr(lora_grouped, "stacked", spy_stacked)
    monkeypatch.setattr(grouped_plan._Skeleton, "signature", spy_signature)
    return counts


def test_each_adapter_is_checked_once_per_pass_and_points_read_plan_stacks(model, seen, monkeypatch):
    cache = grouped_weights.WeightCache()
    mix = NAMES[:4]
    for _ in range(3):
        with grouped_weights.caching(cache):
            out = packed_logits(model, mix)
        torch.testing.assert_close(
            out, reference(monkeypatch, lambda: packed_logits(model, mix)), atol=ATOL, rtol=0
        )
    assert seen == {"planned": 3 * POINTS, "stacked": 0, "signatures": 3 * len(mix)}
    assert (cache.builds, cache.copies, cache.hits) == (POINTS, 0, 2 * POINTS)


def edit_scale(model: Any) -> None:
    model._store.adapters["p1"].layers["0"]["v"].scaling = -3.0


def edit_in_place(model: Any) -> None:
    with torch.no_grad():
        model._store.adapters["p2"].layers["1"]["v"].lora_A.mul_(
            -2.0
        )  # (q is moot: a token attends to itself)


def edit_data(model: Any) -> None:
    lora = model._store.adapters["p0"].layers["1"]["v"]
    lora.lora_B.data = lora.lora_B.data * 3.0  # new storage, same Parameter


def edit_parameter(model: Any) -> None:
    lora = model._store.adapters["p3"].layers["0"]["v"]
    lora.lora_B = nn.Parameter(lora.lora_B.detach() * -1.5)


def edit_layer(model: Any) -> None:
    points = model._store.adapters["p1"].layers["1"]
    layer = copy.deepcopy(points["v"])
    with torch.no_grad():
        layer.lora_B.mul_(2.5)
    points["v"] = layer  # a new layer module where the old one was


@pytest.mark.parametrize("edit", [edit_scale, edit_in_place, edit_data, edit_parameter, edit_layer])
def test_a_change_between_steps_is_seen(model, seen, monkeypatch, edit):
    cache = grouped_weights.WeightCache()
    mix = NAMES[:4]
    with grouped_weights.caching(cache):
        before = packed_logits(model, mix)
    edit(model)
    with grouped_weights.caching(cache):
        after = packed_logits(model, mix)
    assert not torch.allclose(before, after, atol=1e-4)
    torch.testing.assert_close(
        after, reference(monkeypatch, lambda: packed_logits(model, mix)), atol=ATOL, rtol=0
    )
    assert seen["planned"] == 2 * POINTS and seen["stacked"] == 0
    assert cache.copies == POINTS  # the changed adapter copied again at each of its points


def test_an_adapter_deleted_and_added_again_takes_its_slots_afresh_and_is_forgotten(model, seen, monkeypatch):
    cache = grouped_weights.WeightCache()
    mix = NAMES[:3]
    with grouped_weights.caching(cache):
        packed_logits(model, mix)
    old = model._store.adapters["p1"]
    model.delete_adapter("p1")
    model.add_adapter("p1", "lora[r=4,alpha=8]")
    perturb(model._store.adapters["p1"], std=0.2, seed=99)
    del old
    gc.collect()
    with grouped_weights.caching(cache):
        out = packed_logits(model, mix)
    torch.testing.assert_close(
        out, reference(monkeypatch, lambda: packed_logits(model, mix)), atol=ATOL, rtol=0
    )
    assert cache.copies == POINTS and seen["stacked"] == 0
    live = {id(model._store.adapters[name]) for name in mix}
    assert set(cache.generations._entries) == live  # the deleted adapter's entry (and what it held) is gone


def test_a_mix_that_grows_slides_and_shrinks_equals_the_reference_and_copies_only_new_adapters(
    model, seen, monkeypatch
):
    cache = grouped_weights.WeightCache()
    mixes = [NAMES[:3], NAMES[:4], NAMES[1:5], ["p4", "p1", "p3", "p2"], ["p3", "p1"], ["p1", "p5", "p1"]]
    for mix in mixes:
        with grouped_weights.caching(cache):
            out = packed_logits(model, mix)
        expected = reference(monkeypatch, lambda m=mix: packed_logits(model, m))
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    # one build; 3 -> 4 keeps p0..p2 and copies p3; the slide copies p4 into p0's slot (slots: p4 p1 p2 p3); the
    # permutation reuses every slot; the shrink to (p3, p1) keeps p1 and moves p3 from slot 3 to slot 0; the last
    # mix holds p1 once and copies it into a second slot, and p5
    counts = (cache.builds, cache.copies, cache.hits, cache.resizes, cache.moves)
    assert counts == (POINTS, 4 * POINTS, POINTS, 3 * POINTS, POINTS)
    assert seen["planned"] == len(mixes) * POINTS and seen["stacked"] == 0


def test_row_blocks_under_a_plan_equal_the_reference(model, seen, monkeypatch):
    ids = torch.randint(3, 99, (5, 3), generator=torch.Generator().manual_seed(8))
    cache = grouped_weights.WeightCache()
    for sizes in ([2, 2, 1], [1, 1, 3]):
        setup = BatchSplit("p1", "p4", "p5", batch_sizes=sizes)

        def run(s: Any = setup) -> torch.Tensor:
            with torch.no_grad(), model.adapter_setup(s):
                return model(input_ids=ids).logits  # type: ignore[no-any-return]

        with grouped_weights.caching(cache):
            out = run()
        torch.testing.assert_close(out, reference(monkeypatch, run), atol=ATOL, rtol=0)
    assert seen["planned"] == 2 * POINTS and cache.builds == POINTS and cache.hits == POINTS


def test_no_plan_without_a_cache_with_gradients_or_with_active_dropout(seen, monkeypatch):
    llama = make_model()
    mix = NAMES[:3]
    packed_logits(llama, mix)  # no cache
    ids = torch.randint(3, 99, (1, 3), generator=torch.Generator().manual_seed(3))
    row = PackedRow(mix, [1, 1, 1])
    with grouped_weights.caching(grouped_weights.WeightCache()), llama.adapter_setup(row.setup):
        llama(
            input_ids=ids, position_ids=row.position_ids(), attention_mask=row.attention_mask(torch.float32)
        )
    assert seen["planned"] == 0 and seen["signatures"] == 0 and seen["stacked"] == 2 * POINTS
    llama.add_adapter("drop1", "lora[r=4,dropout=0.5]")
    llama.add_adapter("drop2", "lora[r=4,dropout=0.5]")
    llama.train()
    torch.manual_seed(0)
    with grouped_weights.caching(grouped_weights.WeightCache()):
        packed_logits(llama, ["drop1", "drop2"])
    assert seen["planned"] == 0 and seen["signatures"] == 2  # checked, then refused: dropout is active


def test_sizes_that_go_down_and_up_past_the_capacity_equal_the_reference(model, seen, monkeypatch):
    cache = grouped_weights.WeightCache()
    mixes = [NAMES[:4], ["p3", "p0"], ["p5", "p0", "p3", "p2"], NAMES[1:6], ["p2", "p4", "p0"], NAMES[::-1]]
    for mix in mixes:
        with grouped_weights.caching(cache):
            out = packed_logits(model, mix)
        expected = reference(monkeypatch, lambda m=mix: packed_logits(model, m))
        torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    assert cache.builds == POINTS and cache.resizes == (len(mixes) - 1) * POINTS
    assert seen["planned"] == len(mixes) * POINTS and seen["stacked"] == 0


@pytest.mark.parametrize("config", ["lora[r=4]", "pfeiffer"])
def test_torch_compile_fullgraph_runs_grouped_adapters_without_a_plan(config):
    """Under torch.compile (fullgraph: no context variable is read while tracing) a Split of alike adapters runs
    grouped with its weights stacked afresh in the graph, inside the caller's cache block too: it equals eager and
    keeps nothing."""
    llama = build("llama", "causal_lm", seed=0)
    adapterhub.init(llama)
    for i, name in enumerate("abc"):
        llama.add_adapter(name, config)
        perturb(llama._store.adapters[name], std=0.2, seed=70 + i)
    llama.set_active_adapters(Split("a", "b", "c", split_index=[1, 2]))
    ids = torch.randint(3, 99, (2, 3), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = llama(input_ids=ids).logits
    torch._dynamo.reset()
    compiled = torch.compile(llama, backend="aot_eager", fullgraph=True)
    cache = grouped_weights.WeightCache()
    with torch.no_grad(), grouped_weights.caching(cache):
        for _ in range(2):
            torch.testing.assert_close(compiled(input_ids=ids).logits, reference, atol=1e-5, rtol=0)
    assert cache.builds == cache.hits == 0
    torch._dynamo.reset()

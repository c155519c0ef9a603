"""Grouped bottleneck adapters over a Split's token slices (``BottleneckAdapter.split_grouped``,
``methods/bottleneck_grouped``): Pfeiffer, Houlsby, learned / per-channel scalings, Compacter and parallel adapters
run as one computation for equal slices end to end (a packed decode step), equal slices between base positions,
unequal slices (padded or one after the other), also with the slots of the caller's cache in another order than the
mix; every case equals the same Split run slice by slice (the interpreter's fallback) to 1e-5, and positions with
no adapter keep the base value (pre-norm Llama and post-norm BERT). Adapters placed differently and gated adapters
fall back and are still equal. A BatchSplit's row blocks run grouped too (equal and unequal blocks, from the plan's
kept slot stacks under a ``WeightCache``) and equal block by block. The packed generation engine with three Pfeiffer adapters and a base row gives the
tokens of ``model.generate`` with each adapter alone."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

import adapterhub
import adapterhub.runtime.interpreter as interpreter
from adapterhub.methods import bottleneck_grouped, grouped_weights
from adapterhub.methods.base import AdapterModule
from adapterhub.methods.bottleneck import BottleneckAdapter
from adapterhub.methods.parallel_adapter import ParallelAdapter
from adapterhub.serving import GenerationEngine
from adapterhub.spec.composition import BatchSplit, Split
from method_checks import packed_logits
from tiny_models import build, perturb

ATOL = 1e-5
CONFIGS = {
    "p": "pfeiffer",
    "h": "houlsby",
    "c": "pfeiffer[scaling=channel]",
    "l": "pfeiffer[scaling=learned]",
    "k": "compacter[reduction_factor=4]",
    "r": "par_bn",
    "g": "gated_bottleneck",
    "i": "pfeiffer+inv",
}


def add_family(model: Any, prefix: str, config: str, count: int, seed: int) -> None:
    """``count`` adapters ``{prefix}0`` ... of ``config``, weights far from identity (every scaling differs)."""
    for i in range(count):
        name = f"{prefix}{i}"
        model.add_adapter(name, config)
        perturb(model._store.adapters[name], std=0.2, seed=seed + i)
        for key, param in model._store.adapters[name].named_parameters():
            if key.endswith("scaling"):
                with torch.no_grad():
                    param.add_(1.0 + 0.3 * i)  # away from 0 so that the adapter shows


@pytest.fixture(scope="module")
def model() -> Any:
    llama = build("llama", "causal_lm", seed=0)
    adapterhub.init(llama)
    for j, (prefix, config) in enumerate(CONFIGS.items()):
        add_family(llama, prefix, config, 4, seed=40 + 10 * j)
    llama.add_adapter("q0", "pfeiffer[original_ln_after=false]")  # another placement
    perturb(llama._store.adapters["q0"], std=0.2, seed=99)
    return llama


@pytest.fixture
def grouped(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the grouped computations (``split``) and their layouts (``gather``: equal slices gathered;
    ``padded``: unequal slices padded)."""
    seen: Counter[str] = Counter()
    for what, name in (("split", "split_deltas"), ("gather", "_positions"), ("padded", "_padded")):
        original = getattr(bottleneck_grouped, name)

        def spy(*args: Any, _what: str = what, _original: Any = original) -> Any:
            seen[_what] += 1
            return _original(*args)

        monkeypatch.setattr(bottleneck_grouped, name, spy)
    return seen


def no_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the interpreter's slice-by-slice fallback fail: the Split must run grouped at every point."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the Split of alike bottleneck adapters fell back to slice by slice")

    monkeypatch.setattr(interpreter, "_run_chunks", refuse)


def separately(monkeypatch: pytest.MonkeyPatch, run: Any) -> torch.Tensor:
    """``run()`` with bottleneck grouping refused: each slice through its own adapter (the interpreter's way)."""
    with monkeypatch.context() as patch:
        patch.setattr(BottleneckAdapter, "split_grouped", lambda *a, **k: None)
        patch.setattr(ParallelAdapter, "split_grouped", lambda *a, **k: None)
        return run()  # type: ignore[no-any-return]


def assert_grouped_equals_separate(
    model: Any, setups: list[Any], lengths: list[int], monkeypatch: pytest.MonkeyPatch
) -> torch.Tensor:
    with monkeypatch.context() as patch:
        no_chunks(patch)
        out = packed_logits(model, setups, lengths)
    reference = separately(monkeypatch, lambda: packed_logits(model, setups, lengths))
    torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)
    base = packed_logits(model, [None] * len(setups), lengths)
    assert not torch.allclose(out, base, atol=1e-3)  # the adapters change the output
    return out


@pytest.mark.parametrize("prefix", ["p", "h", "c", "l", "k", "r"])
def test_decode_step_of_different_adapters_runs_as_one_view_and_equals_slice_by_slice(
    model, grouped, monkeypatch, prefix
):
    setups = [f"{prefix}{i}" for i in range(4)]
    assert_grouped_equals_separate(model, setups, [1, 1, 1, 1], monkeypatch)
    adapter = model._store.adapters[setups[0]]
    points = sum(
        len(adapter.points(i)) for i in range(model.config.num_hidden_layers)
    )  # Houlsby: 2 per layer
    assert grouped == {"split": points}  # every point, no gather, no padding


@pytest.mark.parametrize("prefix", ["p", "h", "c", "r"])
def test_equal_slices_of_several_tokens_in_several_rows(model, grouped, monkeypatch, prefix):
    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(4))
    setup = Split(f"{prefix}0", f"{prefix}3", f"{prefix}1", split_index=[3, 6])

    def run() -> torch.Tensor:
        with torch.no_grad(), model.adapter_setup(setup):
            return model(input_ids=ids).logits  # type: ignore[no-any-return]

    with monkeypatch.context() as patch:
        no_chunks(patch)
        out = run()
    assert grouped["split"] > 0 and grouped["gather"] == 0
    torch.testing.assert_close(out, separately(monkeypatch, run), atol=ATOL, rtol=0)


@pytest.mark.parametrize("prefix", ["p", "h", "l", "r"])
@pytest.mark.parametrize(
    ("lengths", "layout"),
    [([3, 1, 2, 5], "padded"), ([20, 1, 1, 1], "one after the other")],
    ids=["padded", "loop"],
)
def test_unequal_slices_run_grouped_and_equal_slice_by_slice(
    model, grouped, monkeypatch, prefix, lengths, layout
):
    setups = [f"{prefix}{i}" for i in range(4)]
    assert_grouped_equals_separate(model, setups, lengths, monkeypatch)
    assert grouped["split"] > 0
    assert (grouped["padded"] > 0) == (layout == "padded")


@pytest.mark.parametrize("prefix", ["p", "h", "c", "r"])
@pytest.mark.parametrize(
    ("setups", "lengths"),
    [
        (["0", None, "1", "2"], [1, 1, 1, 1]),  # a base row between decode tokens: gathered
        ([None, "0", "1", None, "2"], [2, 1, 1, 3, 1]),
        (["0", None, "3", "1"], [2, 4, 1, 3]),  # unequal with a base slice
    ],
    ids=["equal", "equal-ends", "unequal"],
)
def test_positions_with_no_adapter_keep_the_base_value(model, grouped, monkeypatch, prefix, setups, lengths):
    named = [None if s is None else f"{prefix}{s}" for s in setups]
    assert_grouped_equals_separate(model, named, lengths, monkeypatch)
    assert grouped["split"] > 0
    if lengths == [1, 1, 1, 1]:
        assert grouped["gather"] > 0


def test_slot_order_of_a_kept_cache_differs_from_the_mix(model, grouped, monkeypatch):
    """Under one ``WeightCache`` (as the engine runs), a mix of the same size keeps the held adapters in their
    slots: the second step's slices are taken in slot order (gathered), the deltas put back where they belong."""
    cache = grouped_weights.WeightCache()
    steps = [["p0", "p1", "p2"], ["p2", "p0", "p3"], ["p3", "p2", None, "p1"], ["p1", "p3", "p2"]]
    for setups in steps:
        with grouped_weights.caching(cache), monkeypatch.context() as patch:
            no_chunks(patch)
            out = packed_logits(model, setups)
        reference = separately(monkeypatch, lambda s=setups: packed_logits(model, s))
        torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)
    assert cache.copies > 0  # a new adapter copied into the slot of one that left
    assert grouped["gather"] > 0  # a mix taken out of order


def test_one_adapter_on_slices_apart_runs_grouped_under_a_kept_cache(model, monkeypatch):
    """``Split(a, b, a, c)`` (a packed row whose sequences on one adapter are not adjacent): the adapter takes
    two slots, step after step under one ``WeightCache`` and without one."""
    cache = grouped_weights.WeightCache()
    for setups in (["p0", "p1", "p0", "p2"], ["p0", "p1", "p0", "p2"], ["p1", "p0", "p1", None, "p0"]):
        for kept in (True, False):
            with monkeypatch.context() as patch:
                no_chunks(patch)
                if kept:
                    with grouped_weights.caching(cache):
                        out = packed_logits(model, setups)
                else:
                    out = packed_logits(model, setups)
            reference = separately(monkeypatch, lambda s=setups: packed_logits(model, s))
            torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)


def test_changed_weights_are_seen_under_a_kept_cache(model, monkeypatch):
    cache = grouped_weights.WeightCache()
    setups = ["p0", "p1", "p2"]
    with grouped_weights.caching(cache):
        first = packed_logits(model, setups)
    layer = model._store.adapters["p1"].layers["0"]["ffn"]
    saved = layer.up.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.up.weight.mul_(3.0)
        with grouped_weights.caching(cache):
            second = packed_logits(model, setups)
        reference = separately(monkeypatch, lambda: packed_logits(model, setups))
        torch.testing.assert_close(second, reference, atol=ATOL, rtol=0)
        assert not torch.allclose(first, second, atol=1e-4)
    finally:
        with torch.no_grad():
            layer.up.weight.copy_(saved)


IDS = torch.randint(3, 99, (6, 4), generator=torch.Generator().manual_seed(8))


def rows_logits(model: Any, names: list[str], sizes: list[int]) -> torch.Tensor:
    """``BatchSplit(*names, batch_sizes=sizes)`` over the 6 rows of ``IDS``, gradients off."""
    with torch.no_grad(), model.adapter_setup(BatchSplit(*names, batch_sizes=sizes)):
        return model(input_ids=IDS).logits  # type: ignore[no-any-return]


def rows_separately(monkeypatch: pytest.MonkeyPatch, run: Any) -> torch.Tensor:
    """``run()`` with bottleneck row grouping refused: each row block through its own adapter."""
    with monkeypatch.context() as patch:
        patch.setattr(BottleneckAdapter, "batch_split_grouped", lambda *a, **k: None)
        patch.setattr(ParallelAdapter, "batch_split_grouped", lambda *a, **k: None)
        return run()  # type: ignore[no-any-return]


@pytest.fixture
def row_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """The slot order of every grouped row computation (``bottleneck_grouped.batch_split_deltas``)."""
    calls: list[tuple[int, ...]] = []
    original = bottleneck_grouped.batch_split_deltas

    def spy(st: Any, x: torch.Tensor, sizes: Any) -> torch.Tensor:
        calls.append(st.order)
        return original(st, x, sizes)

    monkeypatch.setattr(bottleneck_grouped, "batch_split_deltas", spy)
    return calls


@pytest.mark.parametrize("prefix", ["p", "h", "c", "l", "k", "r"])
@pytest.mark.parametrize("sizes", [[2, 2, 2], [1, 3, 2]], ids=["equal", "unequal"])
def test_row_blocks_run_grouped_and_equal_block_by_block(model, row_calls, monkeypatch, prefix, sizes):
    names = [f"{prefix}{i}" for i in (2, 0, 3)]
    out = rows_logits(model, names, sizes)
    assert row_calls  # grouped
    expected = rows_separately(monkeypatch, lambda: rows_logits(model, names, sizes))
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    with torch.no_grad():
        assert not torch.allclose(out, model(input_ids=IDS).logits, atol=1e-3)  # the adapters show


def test_row_blocks_keep_slot_stacks_across_passes_and_see_an_in_place_change(model, row_calls, monkeypatch):
    """Under one ``WeightCache`` the row layout reads the plan's slot stacks: a mix of the same size keeps the held
    adapters in their slots (the blocks taken in slot order, equal and unequal sizes), an unchanged mix is a hit,
    and an adapter's weights written in place are copied again; every step equals block by block."""
    cache = grouped_weights.WeightCache()
    steps = [
        (["p0", "p1", "p2"], [2, 2, 2]),
        (["p2", "p0", "p3"], [2, 2, 2]),
        (["p2", "p0", "p3"], [1, 3, 2]),
    ]
    outs = []
    for names, sizes in steps:
        with grouped_weights.caching(cache):
            outs.append(rows_logits(model, names, sizes))
        expected = rows_separately(monkeypatch, lambda n=names, s=sizes: rows_logits(model, n, s))
        torch.testing.assert_close(outs[-1], expected, atol=ATOL, rtol=0)
    points = len(row_calls) // len(steps)
    assert (cache.builds, cache.copies, cache.hits) == (points, points, points)  # p3 copied into p1's slot
    assert row_calls[-1] != (0, 1, 2)  # the blocks taken in slot order
    layer = model._store.adapters["p0"].layers["1"]["ffn"]
    saved = layer.up.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.up.weight.mul_(3.0)
        with grouped_weights.caching(cache):
            changed = rows_logits(model, *steps[-1])
        assert cache.builds == points and cache.copies == 2 * points  # p0 copied again at each of its points
        assert not torch.allclose(changed, outs[-1], atol=1e-4)
        expected = rows_separately(monkeypatch, lambda: rows_logits(model, *steps[-1]))
        torch.testing.assert_close(changed, expected, atol=ATOL, rtol=0)
    finally:
        with torch.no_grad():
            layer.up.weight.copy_(saved)


def test_row_blocks_with_gradients_on_keep_nothing(model, row_calls):
    cache = grouped_weights.WeightCache()
    with (
        grouped_weights.caching(cache),
        model.adapter_setup(BatchSplit("p0", "p1", "p2", batch_sizes=[2, 2, 2])),
    ):
        out = model(input_ids=IDS).logits
    assert out.requires_grad and row_calls and cache.builds == 0


def test_invertible_adapters_group_at_residual_points_and_run_their_couplings_slice_by_slice(
    model, grouped, monkeypatch
):
    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(4))

    def run(setup: Any) -> torch.Tensor:
        with torch.no_grad(), model.adapter_setup(setup):
            return model(input_ids=ids).logits  # type: ignore[no-any-return]

    setup = Split("i0", "i1", None, "i2", split_index=[2, 5, 6])
    out = run(setup)
    assert (
        grouped["split"] == model.config.num_hidden_layers
    )  # after each feed-forward block; embeddings apart
    torch.testing.assert_close(out, separately(monkeypatch, lambda: run(setup)), atol=ATOL, rtol=0)
    assert not torch.allclose(out, run(Split("p0", "p1", None, "p2", split_index=[2, 5, 6])), atol=1e-3)


@pytest.mark.parametrize(
    "setups",
    [["p0", "q0", "p1"], ["p0", "h1"], ["g0", "g1", "g2"], ["p0", "r1"], ["p0", "k1"]],
    ids=[
        "placement",
        "houlsby-with-pfeiffer",
        "gated",
        "parallel-with-sequential",
        "compacter-with-bottleneck",
    ],
)
def test_adapters_that_cannot_group_fall_back_and_are_still_equal(model, grouped, monkeypatch, setups):
    modules = [model._store.adapters[s] for s in setups]
    assert modules[0].split_grouped(modules, 1, ("residual", "ffn"), None, [(0, 1)] * len(modules)) is None
    out = packed_logits(model, setups)
    assert grouped["split"] == 0
    reference = separately(monkeypatch, lambda: packed_logits(model, setups))
    torch.testing.assert_close(out, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("setups", "lengths"),
    [
        (["l0", "l1", "l2"], [2, 2, 2]),  # view
        (["l0", None, "l1", "l2"], [1, 1, 1, 1]),  # gather
        (["l0", "l1", "l2"], [3, 1, 2]),  # padded
        (["l0", "l1", "l2"], [20, 1, 1]),  # one after the other
    ],
    ids=["view", "gather", "padded", "loop"],
)
def test_gradients_of_a_grouped_split_equal_slice_by_slice(model, monkeypatch, setups, lengths):
    """With gradients on (no plan: the weights stacked afresh), every adapter's weights and learned scaling get
    the gradient of its own slice only, as the slices run one by one give them."""
    named = sorted({s for s in setups if s is not None})
    params = [p for n in named for p in model._store.adapters[n].parameters()]
    ids = torch.randint(3, 99, (1, sum(lengths)), generator=torch.Generator().manual_seed(2))
    edges = [sum(lengths[: i + 1]) for i in range(len(lengths) - 1)]
    setup = Split(*setups, split_index=edges)

    def grads() -> list[torch.Tensor]:
        for p in params:
            p.grad = None
        with model.adapter_setup(setup):
            model(input_ids=ids).logits.square().mean().backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]

    saved = {p: p.requires_grad for p in params}
    try:
        for p in params:
            p.requires_grad_(True)
        with monkeypatch.context() as patch:
            no_chunks(patch)
            grouped = grads()
        reference = separately(monkeypatch, grads)
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
    per_adapter = len(reference) // len(named)
    for i in range(len(named)):  # every adapter's slice reaches the loss
        assert any(float(g.abs().sum()) > 0 for g in reference[i * per_adapter : (i + 1) * per_adapter])
    for got, want in zip(grouped, reference, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "config",
    ["pfeiffer", "houlsby", "pfeiffer[original_ln_after=false]", "pfeiffer[residual_before_ln=false]"],
)
def test_post_norm_model_keeps_the_layernorm_output_where_no_adapter_sits(config, monkeypatch):
    bert = adapterhub.init(build("bert", "base", seed=0))
    add_family(bert, "a", config, 3, seed=5)
    ids = torch.randint(3, 99, (2, 10), generator=torch.Generator().manual_seed(8))
    setup = Split("a0", None, "a1", "a2", None, split_index=[2, 4, 5, 8])

    def run() -> torch.Tensor:
        with torch.no_grad(), bert.adapter_setup(setup):
            return bert(input_ids=ids).last_hidden_state  # type: ignore[no-any-return]

    with monkeypatch.context() as patch:
        no_chunks(patch)
        out = run()
    torch.testing.assert_close(out, separately(monkeypatch, run), atol=ATOL, rtol=0)


NEW = 6


def test_packed_engine_with_three_pfeiffer_adapters_and_a_base_row_equals_generate_alone(model, grouped):
    generator = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 99, (n,), generator=generator).tolist() for n in (4, 7, 5, 6)]
    adapters = ["p0", "p1", None, "p2"]
    engine = GenerationEngine(model, max_num_seqs=4, stop_ids=[], packed=True)
    handles = [
        engine.submit(p, adapter=a, max_new_tokens=NEW) for p, a in zip(prompts, adapters, strict=True)
    ]
    while any(h.status != "finished" for h in handles):
        engine.step()
    engine.close()
    assert grouped["split"] > 0
    for handle, prompt, adapter in zip(handles, prompts, adapters, strict=True):
        with torch.no_grad(), model.adapter_setup(adapter):
            out = model.generate(
                torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=None
            )
        assert handle.result() == out[0, len(prompt) :].tolist(), adapter


@pytest.mark.parametrize(
    "config",
    ["pfeiffer", "houlsby", "par_bn", "gated_bottleneck", "pfeiffer+inv", "pfeiffer[leave_out=[0,1]]"],
)
def test_kinds_and_presence_read_directly_agree_with_the_points(config):
    """``BottleneckAdapter.kinds`` / ``present`` (read from the layer dictionary, the hot path of a step) answer
    as the generic walk over ``points`` does, subclasses' embedding points included."""
    llama = adapterhub.init(build("llama", "base", seed=0))
    llama.add_adapter("a", config)
    adapter = llama._store.adapters["a"]
    assert adapter.kinds() == AdapterModule.kinds(adapter)
    for layer in range(llama.config.num_hidden_layers):
        for point in [
            ("residual", "attn"),
            ("residual", "ffn"),
            ("embedding", "embeddings"),
            ("linear", "q"),
        ]:
            assert adapter.present(layer, *point) == (point in adapter.points(layer)), (layer, point)

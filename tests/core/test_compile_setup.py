"""torch.compile(fullgraph=True) with the per-call setup (``with model.adapter_setup(...)``): the compiled model
equals eager under every setup, a graph traced under one setup never serves another (in any thread), and equal
setups reuse their graph. The mechanism (``adapterhub.runtime.traced_context``) is pinned on its own too, so that a
torch upgrade that changes how dynamo reads C properties shows here."""

from __future__ import annotations

import asyncio
import copy
import threading
from typing import Any

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import adapterhub
from adapterhub import BatchSplit, Split, Stack
from adapterhub.runtime.traced_context import TracedContextVar
from tiny_models import build, perturb

# (arch, model kind, adapter config)
MODELS = [
    ("bert", "base", "houlsby"),
    # a minute of compiling; Llama's per-call setups are also in the threads test
    pytest.param("llama", "causal_lm", "lora[r=4]", marks=pytest.mark.slow),
]
# (setup, per-call skip_layers)
SETUPS = [
    ("a", None),
    ("b", None),
    (Stack("a", "b"), None),
    (BatchSplit("a", "b", batch_sizes=[1, 1]), None),
    (Split("a", "b", split_index=2), None),
    ("a", [0]),
    (None, None),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(arch: str, kind: str, config: str) -> torch.nn.Module:
    model = adapterhub.init(build(arch, kind))
    for i, name in enumerate("ab"):
        model.add_adapter(name, config=config)
        perturb(model._adapterhub.adapters[name], seed=11 + i)
    model.set_active_adapters(
        "b"
    )  # the model's own setup: every call below overrides it (or, with None, clears it)
    return model


def _ids() -> torch.Tensor:
    return torch.randint(3, 99, (2, 5), generator=torch.Generator().manual_seed(3))  # (batch, seq)


def _out(model: torch.nn.Module, ids: torch.Tensor, setup: object, skip: list[int] | None) -> torch.Tensor:
    with torch.no_grad(), model.adapter_setup(setup, skip_layers=skip):
        return model(input_ids=ids)[0]


@pytest.mark.parametrize(("arch", "kind", "config"), MODELS)
def test_fullgraph_under_adapter_setup_equals_eager_and_compiles_once_per_setup(arch, kind, config):
    model = _model(arch, kind, config)
    ids = _ids()
    eager = [_out(model, ids, setup, skip) for setup, skip in SETUPS]
    for i in range(
        len(eager)
    ):  # the setups differ in their outputs, so equal outputs below mean the right graph
        for j in range(i):
            assert not torch.allclose(eager[i], eager[j], atol=1e-4), (SETUPS[i], SETUPS[j])
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for (setup, skip), expected in zip(SETUPS, eager):
        torch.testing.assert_close(_out(compiled, ids, setup, skip), expected, atol=1e-5, rtol=0)
    compiles = counter.frame_count
    assert compiles >= len(SETUPS)
    # again, with equal setups built anew and in another order: each reuses its graph, none is recompiled
    for index in (4, 2, 6, 0, 5, 3, 1):
        setup, skip = copy.deepcopy(SETUPS[index])
        torch.testing.assert_close(_out(compiled, ids, setup, skip), eager[index], atol=1e-5, rtol=0)
    assert counter.frame_count == compiles
    # set_active_adapters, the model's own setup, still compiles and is followed
    model.set_active_adapters(Stack("a", "b"))
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=ids)[0], eager[2], atol=1e-5, rtol=0)


def _with_heads() -> torch.nn.Module:
    """Tiny BERT with adapters and flexible classification heads "a" (2 labels) and "b" (3 labels)."""
    model = adapterhub.init(build("bert"))
    for i, name in enumerate("ab"):
        model.add_adapter(name, config="pfeiffer")
        perturb(model._adapterhub.adapters[name], seed=21 + i)
        model.add_classification_head(name, num_labels=2 + i)
    return model


@pytest.mark.parametrize("heads", [False, True], ids=["llama_lora", "bert_heads"])
def test_threads_calling_one_compiled_model_each_get_their_own_setup(heads):
    """Two threads start cold together on one compiled model, each under its own setup (with heads: each its own
    head, of another number of labels; the per-call head state crosses hooks in this thread's ``CallState``)."""
    model = _with_heads() if heads else _model("llama", "causal_lm", "lora[r=4]")
    ids = _ids()
    names = ("a", "b")

    def first(out: Any) -> torch.Tensor:  # the head's logits, else the hidden states / LM logits
        return out.logits if heads else out[0]

    expected = {}
    for name in names:
        with torch.no_grad(), model.adapter_setup(name):
            expected[name] = first(model(input_ids=ids))
    assert expected["a"].shape != expected["b"].shape or not torch.allclose(
        expected["a"], expected["b"], atol=1e-4
    )
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    barrier = threading.Barrier(len(names))
    results: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            barrier.wait()  # both start cold: each thread's first call compiles (or waits for the other's compile)
            for _ in range(12):
                with torch.no_grad(), model.adapter_setup(name):
                    out = compiled(input_ids=ids)
                results[name].append(first(out))
        except BaseException as error:  # handed to the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for name in names:
        assert len(results[name]) == 12
        for out in results[name]:
            torch.testing.assert_close(out, expected[name], atol=1e-5, rtol=0)


def test_compiled_call_outside_any_block_runs_the_models_setup_after_blocks_elsewhere():
    """A graph traced inside a block is not reused by a call outside one (where the block's variable is unset)."""
    model = _model("bert", "base", "houlsby")
    ids = _ids()
    under_a = _out(model, ids, "a", None)
    with torch.no_grad():
        own = model(input_ids=ids)[0]  # the model's own setup, "b"
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(_out(compiled, ids, "a", None), under_a, atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(compiled(input_ids=ids)[0], own, atol=1e-5, rtol=0)


# ---- the mechanism itself


def test_traced_context_var_is_per_thread_and_per_task_with_a_default():
    var: TracedContextVar[str | None] = TracedContextVar("v", None)
    assert var.get() is None
    token = var.set("main")
    seen: dict[str, str | None] = {}
    thread = threading.Thread(target=lambda: seen.setdefault("thread", var.get()))
    thread.start()
    thread.join()
    assert seen["thread"] is None and var.get() == "main"

    async def task(value: str) -> str | None:
        inner = var.set(value)
        await asyncio.sleep(0)  # the other task runs and sets its own value meanwhile
        got = var.get()
        var.reset(inner)
        return got

    async def both() -> list[str | None]:
        return list(await asyncio.gather(task("x"), task("y")))

    assert asyncio.run(both()) == ["x", "y"]
    var.set(None)  # a set None is a value, not "unset": the default would answer the same here
    assert var.get() is None
    var.reset(token)
    assert var.get() is None
    copied = copy.deepcopy(var)  # a fresh variable: values are per thread / task, not carried by the object
    var.set("kept")
    assert copied.get() is None and copied.name == "v" and var.get() == "kept"


def test_dynamo_reads_a_traced_context_var_in_fullgraph_and_guards_on_its_value():
    """Pins the dynamo behaviour the per-call setup relies on: the read traces under fullgraph, and each value (the
    unset variable included) gets its own graph, reused for an equal value."""
    var: TracedContextVar[str | None] = TracedContextVar("v", "unset")
    scales = {"unset": 1.0, "a": 2.0, "b": 3.0}

    def f(x: torch.Tensor) -> torch.Tensor:
        return x * scales[var.get()]

    counter = CompileCounterWithBackend("eager")
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    x = torch.ones(2)
    for value, times in ((None, 1.0), ("a", 2.0), ("b", 3.0), ("a", 2.0), (None, 1.0)):
        token = var.set(value) if value is not None else None
        expected = x * times
        torch.testing.assert_close(compiled(x), expected)
        if token is not None:
            var.reset(token)
    assert counter.frame_count == 3


def test_fullgraph_with_flexible_heads_fusion_and_parallel_under_adapter_setup_equals_eager():
    """The per-call setup picks the head (named like its last adapter), a Fuse block and Parallel's branches under
    one compiled model; the fusion's attention weights are recorded from the compiled call as from eager."""
    from adapterhub import Fuse, Parallel
    from adapterhub.runtime.fusion import record_fusion_attentions

    model = _with_heads()
    model.add_adapter_fusion(Fuse("a", "b"))
    ids = _ids()

    def call(target: torch.nn.Module, setup: object) -> object:
        with torch.no_grad(), model.adapter_setup(setup):
            return target(input_ids=ids)

    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for setup, labels in (("a", 2), ("b", 3), ("a", 2)):
        out, expected = call(compiled, setup), call(model, setup)
        assert out.logits.shape == (2, labels)
        torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)
    for target in (model, compiled):
        with record_fusion_attentions() as records:
            out = call(target, Fuse("a", "b"))
        if target is model:
            expected, expected_records = out, records
    torch.testing.assert_close(out.logits, expected.logits, atol=1e-5, rtol=0)
    assert len(records) == len(expected_records) == 2  # one fusion site per layer of the 2-layer model
    for got, want in zip(records, expected_records):
        assert got[:3] == want[:3]
        torch.testing.assert_close(got[3], want[3], atol=1e-5, rtol=0)
    out, expected = call(compiled, Parallel("a", "b")), call(model, Parallel("a", "b"))
    torch.testing.assert_close(out.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=0)
    for branch, want in zip(out, expected):
        torch.testing.assert_close(branch.logits, want.logits, atol=1e-5, rtol=0)


def test_fullgraph_past_the_recompile_limit_raises_rather_than_reusing_another_setups_graph():
    model = _model("bert", "base", "houlsby")
    ids = _ids()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch._dynamo.config.patch(recompile_limit=2):
        for setup in ("a", "b"):
            torch.testing.assert_close(
                _out(compiled, ids, setup, None), _out(model, ids, setup, None), atol=1e-5, rtol=0
            )
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            _out(compiled, ids, Stack("a", "b"), None)

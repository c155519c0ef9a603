"""Composition blocks over adapters targeted by module name where the module is no spec point (BERT's pooler): the
pooled output under BatchSplit equals each adapter on its own rows, Average of one adapter twice equals it, and a
Stack of additive updates (LoRA, LoHa) equals merging both."""

import pytest
import torch

import adapterhub
from adapterhub import Average, BatchSplit, Stack
from method_checks import make_inputs, perturb
from tiny_models import build

TARGETS = ["pooler.dense", "query"]


def _model(method: str):
    model = adapterhub.init(build("bert")).eval()
    for i, name in enumerate("ab"):
        model.add_adapter(name, {"method": method, "r": 2, "target_modules": TARGETS})
        perturb(model._adapterhub.adapters[name], seed=10 + i)
    return model


def _pooled(model, inputs, setup):
    with torch.no_grad(), model.adapter_setup(setup):
        return model(**inputs).pooler_output  # (batch, hidden)


@pytest.mark.parametrize("method", ["lora", "dora", "loha"])
def test_blocks_over_adapters_on_a_module_outside_the_spec(method: str) -> None:
    model = _model(method)
    inputs = make_inputs()
    single = {name: _pooled(model, inputs, name) for name in "ab"}
    assert (single["a"] - single["b"]).abs().max() > 1e-4  # the pooler's adapters act and differ
    for sizes in ([1, 2], [2, 1]):
        rows, start = [], 0
        for name, size in zip("ab", sizes, strict=True):
            rows.append(_pooled(model, {k: v[start : start + size] for k, v in inputs.items()}, name))
            start += size
        torch.testing.assert_close(
            _pooled(model, inputs, BatchSplit("a", "b", batch_sizes=sizes)),
            torch.cat(rows),
            atol=1e-5,
            rtol=0,
        )
    torch.testing.assert_close(_pooled(model, inputs, Average("a", "a")), single["a"], atol=1e-5, rtol=0)
    if method == "dora":  # each DoRA step rescales by its magnitude over W, so a Stack is not merging both
        return
    stacked = _pooled(model, inputs, Stack("a", "b"))
    model.set_active_adapters(Stack("a", "b"))
    model.merge_adapter("a")
    model.merge_adapter("b")
    with torch.no_grad():
        both_merged = model(**inputs).pooler_output
    torch.testing.assert_close(stacked, both_merged, atol=1e-5, rtol=0)

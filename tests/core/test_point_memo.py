"""The store's memo of where a setup's adapters sit (``AdapterStore._sits_at``: a hook whose point holds none of
them returns the base value at once): outputs equal the interpreter's, and the memo is forgotten when adapters are
deleted and re-added with other targets, merged or unmerged, so no stale answer leaves an adapter out or in."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import adapterhub
from adapterhub.errors import AdapterNotFoundError
from adapterhub.spec.composition import BatchSplit
from tiny_models import build, perturb


def logits(model, ids, setup):
    with torch.no_grad(), model.adapter_setup(setup):
        return model(ids).logits


def test_memo_follows_targets_deletes_merges_and_unknown_names():
    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    ids = torch.tensor([[5, 9, 14, 3], [7, 2, 8, 11]])
    base = logits(model, ids, None)
    model.add_adapter("a", "lora[r=2,targets=[q,v]]")
    model.add_adapter("b", "lora[r=2,targets=[q,v]]")
    perturb(model._store.adapters["a"], std=0.3, seed=1)
    perturb(model._store.adapters["b"], std=0.3, seed=2)
    split = BatchSplit("a", "b", batch_sizes=[1, 1])
    first = logits(model, ids, split)  # memo: {a, b} sit at q, v only
    assert not torch.allclose(first, base)
    sites = model._store._sites[frozenset({"a", "b"})]
    assert any(sites.values()) and not all(sites.values())  # both answers recorded

    model.delete_adapter("b")  # "b" again, now at the feed-forward points the memo said were empty
    model.add_adapter("b", "lora[r=2,targets=[ffn_in,ffn_out]]")
    perturb(model._store.adapters["b"], std=0.3, seed=3)
    again = logits(model, ids, split)
    torch.testing.assert_close(again[0], first[0], atol=1e-5, rtol=0)  # row of "a": unchanged
    assert not torch.allclose(again[1], first[1]) and not torch.allclose(again[1], base[1])
    with torch.no_grad(), model.adapter_setup("b"):
        alone = model(ids[1:]).logits
    torch.testing.assert_close(again[1:], alone)

    model.set_active_adapters("a")  # the memo of {a}: q and v hold it
    with torch.no_grad():
        active = model(ids).logits
    model.merge_adapter("a")  # merged: absent at every point (the weights apply it), so counted once
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, active, atol=1e-5, rtol=0)
    model.unmerge_adapter("a")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, active, atol=1e-5, rtol=0)
    model.set_active_adapters(None)

    with pytest.raises(AdapterNotFoundError):  # an unknown name still reaches the interpreter's error
        logits(model, ids, BatchSplit("a", "nope", batch_sizes=[1, 1]))


def test_a_new_mix_asks_each_adapter_once_per_point(monkeypatch):
    """Serving steps whose mix changes (sequences join and leave): a new set of names reuses what each name answered
    at a point, so each adapter module is asked once per point whatever the number of mixes, and the outputs are
    the interpreter's."""
    from adapterhub.methods.lora import LoRAAdapter

    model = build("llama", "causal_lm", seed=0)
    adapterhub.init(model)
    names = ["a", "b", "c", "d"]
    for i, name in enumerate(names):
        model.add_adapter(name, "lora[r=2,targets=[q,v]]")
        perturb(model._store.adapters[name], std=0.3, seed=10 + i)
    asked: list[tuple[int, str, str]] = []
    original = LoRAAdapter.present

    def spy(self, layer, kind, point):
        asked.append((layer, kind, point))
        return original(self, layer, kind, point)

    ids = torch.tensor([[5, 9, 14], [7, 2, 8]])
    mixes = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")]
    expected = [logits(model, ids, BatchSplit(*mix, batch_sizes=[1, 1])) for mix in mixes]
    model._store.changed()
    monkeypatch.setattr(LoRAAdapter, "present", spy)
    for mix, want in zip(mixes, expected, strict=True):
        torch.testing.assert_close(logits(model, ids, BatchSplit(*mix, batch_sizes=[1, 1])), want)
    memo = Counter(
        key for key in asked if key[1] != "linear" or key[2] not in ("q", "v")
    )  # the hooks' questions
    assert memo and max(memo.values()) == 4  # once per adapter (2 names x 4 mixes without the per-name memo)

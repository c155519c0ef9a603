"""``model.model_dims()`` is computed once per module tree (``runtime.modules.cached_by_structure``): the same
object while nothing changed, adapters added or not, and recomputed (equal to a fresh computation) when a module,
a weight or the config is replaced."""

from __future__ import annotations

import copy
import pickle

import torch
from tests.tiny_models import build

import adapterhub


def _model(kind: str = "causal_lm") -> torch.nn.Module:
    model = build("llama", kind)
    adapterhub.init(model)
    return model


def test_cached_while_the_tree_is_unchanged_and_adapters_do_not_count() -> None:
    model = _model()
    first = model.model_dims()
    assert model.model_dims() is first
    model.add_adapter("a", "lora")
    model.add_adapter("b", {"method": "lora", "target_modules": ["q_proj"]})
    assert model.model_dims() is first  # the adapter store is no part of the tree
    model.delete_adapter("a")
    assert model.model_dims() is first
    assert first == model._compute_dims()


def test_resized_embeddings_recompute() -> None:
    model = _model()
    before = model.model_dims()
    vocab = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(vocab + 8)
    after = model.model_dims()
    assert after is not before
    assert after == model._compute_dims()
    rows = {m.path: m.d_in for m in after.modules if m.embedding}
    assert vocab + 8 in rows.values() and vocab not in rows.values()


def test_replaced_module_and_weight_recompute() -> None:
    model = _model("base")
    before = model.model_dims()
    proj = model.layers[0].self_attn.q_proj
    model.layers[0].self_attn.q_proj = torch.nn.Linear(proj.in_features, proj.out_features, bias=True)
    changed = model.model_dims()
    assert changed is not before and changed == model._compute_dims()
    entry = next(m for m in changed.modules if m.path == "layers.0.self_attn.q_proj")
    assert entry.bias and not next(m for m in before.modules if m.path == entry.path).bias
    # a new weight of the same shape is another object: recomputed (equal, since the shapes agree)
    again = model.model_dims()
    model.layers[0].self_attn.q_proj.weight = torch.nn.Parameter(
        torch.zeros(proj.out_features, proj.in_features)
    )
    assert model.model_dims() is not again and model.model_dims() == again


def test_copies_and_pickles_carry_no_cache() -> None:
    model = _model("base")
    dims = model.model_dims()
    clone = copy.deepcopy(model)
    assert clone.model_dims() is not dims and clone.model_dims() == dims
    restored = pickle.loads(pickle.dumps(model))
    assert restored.model_dims() == dims

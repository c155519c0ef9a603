"""The model's own built-in head (e.g. ``classifier`` of ``BertForSequenceClassification``).

Every parameter outside the base model belongs to it, except the output embedding matrix of a language-model class
(``lm_head`` of ``LlamaForCausalLM``, ``cls.predictions.decoder`` of ``BertForMaskedLM``): that matrix is the size
of the vocabulary times the hidden size, usually tied to the input embeddings, and is part of the pretrained model,
so it is neither trained by ``train_adapter`` nor saved with an adapter. The rest is saved with an adapter by
parameter name, as head type ``static``, so a user of ``AutoModelFor...`` classes trains and shares adapter + head
with no extra code.
"""

from __future__ import annotations

from torch import nn

from adapterhub.runtime.layers import get_base_model


def _output_embedding_ids(model: nn.Module) -> set[int]:
    getter = getattr(model, "get_output_embeddings", None)
    try:
        module = getter() if callable(getter) else None
    except (AttributeError, NotImplementedError):
        module = None
    if not isinstance(module, nn.Module):
        return set()
    weight = getattr(module, "weight", None)
    return {id(weight)} if isinstance(weight, nn.Parameter) else set()


def static_head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters of ``model`` that are not in its base model, its output embedding matrix nor adapterhub's own
    modules."""
    base = get_base_model(model)
    if base is model:
        return {}
    excluded = {id(p) for p in base.parameters()} | _output_embedding_ids(model)
    return {
        name: p
        for name, p in model.named_parameters(remove_duplicate=True)
        if id(p) not in excluded and not name.startswith("_adapterhub.")
    }

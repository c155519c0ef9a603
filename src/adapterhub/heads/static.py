"""The model's own built-in head (e.g. ``classifier`` of ``BertForSequenceClassification``).

Every parameter outside the base model belongs to it; it is saved with an adapter by parameter name, as head type
``static``, so a user of ``AutoModelFor...`` classes trains and shares adapter + head with no extra code.
"""

from __future__ import annotations

from torch import nn

from adapterhub.architectures import get_base_model


def static_head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters of ``model`` that are not in its base model nor in adapterhub's own modules."""
    base = get_base_model(model)
    if base is model:
        return {}
    base_ids = {id(p) for p in base.parameters()}
    return {
        name: p
        for name, p in model.named_parameters(remove_duplicate=True)
        if id(p) not in base_ids and not name.startswith("_adapterhub.")
    }

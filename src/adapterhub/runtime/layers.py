"""Walking a model by its ``ArchitectureSpec``: the transformer body (``get_base_model``) and its layers in numbering
order (``get_layers``, ``layer_stacks``). The specs themselves are data in ``adapterhub.spec``."""

from __future__ import annotations

from torch import nn

from adapterhub.errors import UnsupportedArchitectureError
from adapterhub.spec.architecture import ArchitectureSpec, StackSpec


def get_base_model(model: nn.Module) -> nn.Module:
    """The transformer body (``BertModel`` inside ``BertForSequenceClassification``), or the model itself.

    A model whose ``base_model_prefix`` names no attribute (transformers 4.57's ``Gemma3ForCausalLM``: prefix
    ``language_model``, body at ``model``) gets its ``model`` attribute when that is a transformers model."""
    base = getattr(model, "base_model", None)
    if base is model:
        body = getattr(model, "model", None)
        if isinstance(body, nn.Module) and hasattr(body, "config") and hasattr(body, "base_model_prefix"):
            return body
    return base if isinstance(base, nn.Module) else model


def _stack_layers(base: nn.Module, spec: ArchitectureSpec, path: str) -> nn.ModuleList:
    try:
        layers = base.get_submodule(path)
    except AttributeError as error:
        hint = (
            " An encoder-decoder spec needs both stacks: load the model with its decoder (AutoModel or "
            "AutoModelForSeq2SeqLM, not an encoder-only class)."
            if spec.decoder is not None
            else ""
        )
        raise UnsupportedArchitectureError(
            f"The spec for {spec.model_types[0]!r} expects the layers at {path!r}, but "
            f"{type(base).__name__} has no such module ({error}). This transformers version may have renamed it; "
            f"adjust the ArchitectureSpec.{hint}"
        ) from None
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedArchitectureError(f"{path!r} in {type(base).__name__} is not a ModuleList.")
    return layers


def layer_stacks(model: nn.Module, spec: ArchitectureSpec) -> list[tuple[nn.Module, StackSpec]]:
    """Every transformer layer of ``model`` in numbering order (encoder layers, then decoder layers) with the
    description of the stack it belongs to."""
    base = get_base_model(model)
    return [(layer, stack) for stack in spec.stacks() for layer in _stack_layers(base, spec, stack.layers)]


def get_layers(model: nn.Module, spec: ArchitectureSpec) -> nn.ModuleList:
    """The transformer layers in numbering order. Encoder-decoder models: a new list (not a submodule of the
    model) holding the encoder's layers, then the decoder's."""
    base = get_base_model(model)
    if not spec.stacks():
        return nn.ModuleList()  # a model without a spec: no transformer layers
    if spec.decoder is None:
        return _stack_layers(base, spec, spec.layers)
    return nn.ModuleList(layer for layer, _ in layer_stacks(model, spec))

"""Route the model's output through the active flexible head.

The base model's output is captured by a forward hook; while a flexible head is active, ``labels`` are kept away
from the model's own head (so its loss does not run on labels meant for ours), and the model's output is replaced by
the head's output (logits and loss). Hooks are small objects so that ``copy.deepcopy(model)`` re-points them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from adapterhub.architectures import get_base_model
from adapterhub.heads.base import HeadInputs

if TYPE_CHECKING:
    from adapterhub.model import AdapterStore


class _CaptureBaseOutput:
    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self.store.captured_base_output = output


class _HideLabels:
    """Pre-hook: while a flexible head is active, keep ``labels`` away from the model's own head and loss."""

    def __init__(self, model: nn.Module, store: AdapterStore) -> None:
        self.model, self.store = model, store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.model.active_head is None or "labels" not in kwargs:  # type: ignore[attr-defined]
            return None
        kwargs = dict(kwargs)
        self.store.pending_labels = kwargs.pop("labels")
        return args, kwargs


class _ApplyHead:
    """Forward hook: replace the model's output by the active flexible head's logits (and loss)."""

    def __init__(self, model: nn.Module, store: AdapterStore) -> None:
        self.model, self.store = model, store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        store = self.store
        head_name = self.model.active_head  # type: ignore[attr-defined]
        base_output, store.captured_base_output = store.captured_base_output, None
        labels, store.pending_labels = store.pending_labels, None
        if head_name is None or base_output is None:
            return None
        hidden = base_output[0] if isinstance(base_output, tuple) else base_output.last_hidden_state
        pooled = getattr(base_output, "pooler_output", None)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        result = store.heads[head_name](HeadInputs(hidden, attention_mask, input_ids, pooled), labels)
        return SequenceClassifierOutput(
            loss=result.loss,
            logits=result.logits,
            hidden_states=getattr(output, "hidden_states", None),
            attentions=getattr(output, "attentions", None),
        )


def install_head_routing(model: nn.Module, store: AdapterStore) -> None:
    """Route outputs through the active flexible head (if any): the base model's hidden states are captured and
    the model's output is replaced by the head's logits (and loss, computed from ``labels``)."""
    get_base_model(model).register_forward_hook(_CaptureBaseOutput(store))
    model.register_forward_pre_hook(_HideLabels(model, store), with_kwargs=True)
    model.register_forward_hook(_ApplyHead(model, store), with_kwargs=True)

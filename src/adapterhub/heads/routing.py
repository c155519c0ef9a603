"""Route the model's output through the active flexible head.

Three hooks, installed once by ``adapterhub.init``:

- a pre-hook on the model keeps the active head's targets (``labels``, ``start_positions``, ...) away from the
  model's own head while a flexible head is active (so the built-in loss does not run on them), and takes
  ``num_items_in_batch`` / ``logits_to_keep`` out of the call for the head, as well as the further inputs heads
  declare in ``input_names`` (``choice_mask``), which the active head gets in ``HeadInputs``;
- a pre-hook on the base model flattens multiple-choice inputs (batch, n_choices, seq) -> (batch * n_choices, seq)
  while a multiple-choice head is active, or is the head of a branch of an active ``Parallel`` (a
  ``...ForMultipleChoice`` model has done it already);
- a forward hook on the base model captures its output, and a forward hook on the model replaces the model's
  output by the head's, as the transformers output class of the head's task (``SequenceClassifierOutput``,
  ``TokenClassifierOutput``, ``MultipleChoiceModelOutput``, ``QuestionAnsweringModelOutput``,
  ``CausalLMOutputWithPast`` with the base model's ``past_key_values`` so ``generate()`` works, ``MaskedLMOutput``).

What one call hands from the pre-hooks to the output hook (targets, ``num_choices``, ``logits_to_keep``, the base
model's output) is per-call state (``adapterhub.runtime.callstate``), never kept on the model: threads sharing a model
cannot swap each other's hidden states or labels. Hooks are small objects holding the adapter store only (so that
``copy.deepcopy(model)`` re-points them and no reference cycle keeps a model alive).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.heads.base import HEADS, Head
from adapterhub.methods import grouped_weights
from adapterhub.methods.base import EMBEDDING
from adapterhub.runtime import callstate
from adapterhub.runtime.head_inputs import HeadInputs, frame_mask
from adapterhub.runtime.injection import AdapterHook, unembed
from adapterhub.runtime.layers import get_base_model
from adapterhub.runtime.store import AdapterStore
from adapterhub.spec.composition import branch_names, parallel_block

_CHOICE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def all_label_names() -> set[str]:
    """Every keyword that carries targets for some registered head type."""
    return {name for cls in HEADS.values() for name in cls.label_names}


def all_input_names() -> set[str]:
    """Every further model-call keyword (besides targets) that some registered head type consumes."""
    return {name for cls in HEADS.values() for name in cls.input_names}


def _active(store: AdapterStore) -> Head | None:
    name = store.active_head()
    return None if name is None else store.heads[name]  # type: ignore[return-value]


class _BeginCall(AdapterHook):
    """Model pre-hook (runs first): start this call's state when a head or Parallel may need it."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        grouped_weights.begin_pass()  # grouped adapters check their weights once in this pass, not per point
        if self.store.needs_call_state():
            state = callstate.begin(self.store)
            if self.store.reads_positions():
                state.positions = callstate.call_positions(self.store, args, kwargs)
        else:
            callstate.end(self.store)  # drop what a failed call may have left


class _EndCall(AdapterHook):
    """Model forward hook (runs last): end this call's state."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        callstate.end(self.store)
        grouped_weights.end_pass()


class _CaptureBaseOutput(AdapterHook):
    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        state = callstate.current(self.store)
        if state is not None:
            state.base_output = output


class _HideLabels(AdapterHook):
    """Pre-hook: while a flexible head is active, keep the targets away from the model's own head and loss."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        head = _active(self.store)
        state = callstate.current(self.store)
        if head is None:
            extra = sorted(name for name in all_input_names() if kwargs.get(name) is not None)
            if extra:  # (under Parallel the branches' heads took them already: adapterhub.runtime.parallel)
                raise ConfigError(
                    f"{', '.join(extra)} is an input of adapterhub's flexible heads, but no flexible head is "
                    "active, and the model's own head cannot take it. Activate a head that takes it (e.g. "
                    "model.add_multiple_choice_head(name)), or drop it from the call and apply it to the output "
                    "(adapterhub.heads.mask_choices(logits, choice_mask))."
                )
            return None
        if state is None:
            return None
        kwargs = dict(kwargs)
        given = {name: kwargs.pop(name) for name in sorted(all_input_names()) if name in kwargs}
        state.head_inputs = {k: v for k, v in given.items() if k in head.input_names and v is not None}
        labels = {name: kwargs.pop(name) for name in sorted(all_label_names()) if name in kwargs}
        state.labels = {k: v for k, v in labels.items() if k in head.label_names and v is not None}
        kwargs.pop("num_items_in_batch", None)  # our heads average their own loss
        keep = kwargs.get("logits_to_keep")
        if keep is not None and not _accepts(module, "logits_to_keep"):
            kwargs.pop("logits_to_keep")
        state.logits_to_keep = keep
        return args, kwargs


def _accepts(module: nn.Module, name: str) -> bool:
    import inspect

    return name in inspect.signature(module.forward).parameters


class _FlattenChoices(AdapterHook):
    """Base-model pre-hook: (batch, n_choices, seq) inputs -> (batch * n_choices, seq) for a multiple-choice head."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        state = callstate.current(self.store)
        if state is None or not _flattens_choices(self.store):
            return None
        n_choices = None
        kwargs = dict(kwargs)
        for key in (*_CHOICE_INPUTS, "inputs_embeds"):
            value = kwargs.get(key)
            rank = 4 if key == "inputs_embeds" else 3
            if isinstance(value, torch.Tensor) and value.dim() == rank:
                n_choices = value.shape[1]
                kwargs[key] = value.reshape(-1, *value.shape[2:])  # (batch * n_choices, seq[, d])
        flat_args = []
        for value in args:
            if isinstance(value, torch.Tensor) and value.dim() == 3:
                n_choices = value.shape[1]
                value = value.reshape(-1, value.shape[-1])
            flat_args.append(value)
        if n_choices is None:
            return None
        state.num_choices = n_choices
        return tuple(flat_args), kwargs


def _flattens_choices(store: AdapterStore) -> bool:
    """Whether the active head, or the head of any branch of an active Parallel, takes flattened choices."""
    head = _active(store)
    if head is not None:
        return head.flattens_choices
    block = parallel_block(store.current_setup())
    if block is None:
        return False
    return any(name in store.heads and store.heads[name].flattens_choices for name in branch_names(block))


def _flat(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() == 3:
        return value.reshape(-1, value.shape[-1])
    return value


def _real_positions(
    store: AdapterStore, hidden: torch.Tensor, pooled: Any, tokens: Any, attention_mask: Any
) -> tuple[torch.Tensor, Any, Any]:
    """Without the positions an adapter put in front of the tokens (prompt tuning): heads see the real tokens and
    their mask; the model's pooler output (read at position 0, a prompt position) is dropped then. ``tokens``:
    ``input_ids`` (..., T) or ``inputs_embeds`` (B, T, d)."""
    if not isinstance(tokens, torch.Tensor) or hidden.dim() != 3 or not store.uses(EMBEDDING):
        return hidden, pooled, attention_mask
    real = tokens.shape[1] if tokens.is_floating_point() else tokens.shape[-1]
    extra = hidden.shape[1] - real
    if extra <= 0:
        return hidden, pooled, attention_mask
    if isinstance(attention_mask, torch.Tensor) and attention_mask.shape[-1] == hidden.shape[1]:
        attention_mask = attention_mask[..., extra:]  # the base model was called with the extended mask
    return hidden[:, extra:], None, attention_mask


class _ApplyHead(AdapterHook):
    """Forward hook: replace the model's output by the active flexible head's output (and loss)."""

    def __init__(self, store: AdapterStore) -> None:
        self.store = store

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        head = _active(self.store)
        state = callstate.current(self.store)
        if head is None or state is None or state.base_output is None:
            return None
        base_output, labels = state.base_output, state.labels
        n_choices, keep = state.num_choices, state.logits_to_keep
        is_tuple = isinstance(base_output, tuple)
        hidden = base_output[0] if is_tuple else base_output.last_hidden_state
        pooled = None if is_tuple else getattr(base_output, "pooler_output", None)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if head.flattens_choices:
            if n_choices is None and isinstance(input_ids, torch.Tensor) and input_ids.dim() == 3:
                n_choices = input_ids.shape[1]
            input_ids, attention_mask = _flat(input_ids), _flat(attention_mask)
        tokens = input_ids if isinstance(input_ids, torch.Tensor) else kwargs.get("inputs_embeds")
        hidden, pooled, attention_mask = _real_positions(self.store, hidden, pooled, tokens, attention_mask)
        if hidden.dim() == 3:  # audio: a (batch, samples) mask -> (batch, frames)
            attention_mask = frame_mask(module, hidden.shape[1], attention_mask)
        from adapterhub.heads.lm import LanguageModelHead

        if isinstance(head, LanguageModelHead):  # invertible adapters' inverse applies before an LM head
            hidden = unembed(self.store, hidden)
        embeddings = None
        if head.needs_embeddings:
            from adapterhub.runtime.head_inputs import output_embedding_matrix

            embeddings = output_embedding_matrix(module)
        inputs = HeadInputs(
            hidden=hidden,
            attention_mask=attention_mask if isinstance(attention_mask, torch.Tensor) else None,
            input_ids=input_ids if isinstance(input_ids, torch.Tensor) else None,
            pooled=pooled,
            num_choices=n_choices,
            embeddings=embeddings,
            logits_to_keep=keep,
            **state.head_inputs,  # the head's input_names, each a HeadInputs field (choice_mask)
        )
        result = head(inputs, labels or None)
        values: dict[str, Any] = {"loss": result.loss, "logits": result.logits, **result.extra}
        for name in ("past_key_values", "hidden_states", "attentions"):
            values[name] = getattr(output, name, None) if not isinstance(output, tuple) else None
            if values[name] is None and not is_tuple:
                values[name] = getattr(base_output, name, None)
        # the output class's fields (not ``dataclasses.fields``, which torch.compile cannot trace)
        fields: dict[str, Any] = getattr(head.output_type, "__dataclass_fields__")  # noqa: B009
        new_output = head.output_type(**{k: v for k, v in values.items() if k in fields})
        if isinstance(output, tuple):  # return_dict=False
            return new_output.to_tuple()
        return new_output


def install_head_routing(model: nn.Module, store: AdapterStore) -> None:
    """Route outputs through the active flexible head (if any): the base model's hidden states are captured and
    the model's output is replaced by the head's logits (and loss, computed from the head's targets)."""
    base = get_base_model(model)
    base.register_forward_hook(_CaptureBaseOutput(store))
    base.register_forward_pre_hook(_FlattenChoices(store), with_kwargs=True)
    model.register_forward_pre_hook(_HideLabels(store), with_kwargs=True)
    model.register_forward_hook(_ApplyHead(store), with_kwargs=True)


def install_call_hooks(model: nn.Module, store: AdapterStore) -> None:
    """The first pre-hook and the last forward hook of every call: they start and end its per-call state.
    Install after every other model hook."""
    model.register_forward_pre_hook(_BeginCall(store), with_kwargs=True, prepend=True)
    model.register_forward_hook(_EndCall(store))

"""The contract every prediction head follows.

A head maps the base model's last hidden states ``(batch, seq, d)`` to task outputs. It declares

- ``label_names``: the keyword arguments of the model call that carry its targets (hidden from the model's own
  head while the flexible head is active);
- ``output_type``: the transformers output class the model returns while it is active;
- ``input_names``: further keyword arguments of the model call that it consumes (taken out of the call before the
  model runs and handed to the head as the ``HeadInputs`` field of the same name, e.g. ``choice_mask``);
- ``needs_embeddings``: whether it multiplies with the model's (output) embedding matrix (tied LM heads). The tied
  matrix is handed in at forward time through ``HeadInputs.embeddings``; it is never a parameter of the head, so it
  is neither saved with the head nor trained with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from transformers.modeling_outputs import ModelOutput, SequenceClassifierOutput

from adapterhub.errors import ConfigError, did_you_mean
from adapterhub.runtime.head_inputs import HeadInputs


@dataclass
class HeadOutput:
    """``logits`` plus the optional ``loss``; ``extra`` holds further output fields (e.g. ``start_logits``)."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class Head(nn.Module):
    """A named head: ``forward(inputs, labels) -> HeadOutput``; ``options()`` are its JSON-ready settings.

    ``labels`` is a mapping from each of ``label_names`` to the tensor the caller passed (absent names omitted).
    """

    head_type: ClassVar[str] = ""
    label_names: ClassVar[tuple[str, ...]] = ("labels",)
    input_names: ClassVar[tuple[str, ...]] = ()  # each one a field of HeadInputs
    output_type: ClassVar[type[ModelOutput]] = SequenceClassifierOutput
    needs_embeddings: ClassVar[bool] = False
    flattens_choices: ClassVar[bool] = False

    def __init__(self, name: str, hidden_size: int, id2label: Mapping[int, str] | None = None) -> None:
        super().__init__()
        self.head_name = name
        self.hidden_size = hidden_size
        self.id2label: dict[int, str] | None = (
            {int(k): str(v) for k, v in id2label.items()} if id2label else None
        )
        self.settings: dict[str, Any] = {}  # the constructor options that rebuild this head (saved as JSON)

    def options(self) -> dict[str, Any]:
        """JSON-ready options that, with ``name``, ``hidden_size`` and ``id2label``, rebuild this head."""
        return dict(self.settings)

    @property
    def label2id(self) -> dict[str, int] | None:
        return None if self.id2label is None else {v: k for k, v in self.id2label.items()}

    def check_model(self, model: nn.Module) -> None:
        """Raise ``IncompatibleModelError`` if this head cannot run on ``model`` (called when it is added)."""

    def init_from_model(self, model: nn.Module) -> None:
        """Optionally start from the model's own weights (called when a new head is added, not when loaded)."""

    def forward(self, inputs: HeadInputs, labels: Mapping[str, torch.Tensor] | None = None) -> HeadOutput:
        raise NotImplementedError


H = TypeVar("H", bound=type[Head])
HEADS: dict[str, type[Head]] = {}


def register_head(head_type: str) -> Callable[[H], H]:
    def decorate(cls: H) -> H:
        cls.head_type = head_type
        HEADS[head_type] = cls
        return cls

    return decorate


def head_class(head_type: str) -> type[Head]:
    if head_type not in HEADS:
        raise ConfigError(
            f"Unknown head type {head_type!r}{did_you_mean(head_type, HEADS)}; known: {', '.join(sorted(HEADS))}."
        )
    return HEADS[head_type]


def pool(inputs: HeadInputs, position: str) -> torch.Tensor:
    """One vector per row: ``first`` token, ``last`` non-padding token (decoders), or ``mean`` over the mask.

    (batch, seq, d) -> (batch, d)
    """
    hidden, mask = inputs.hidden, inputs.attention_mask
    if position in ("last", "mean") and mask is not None and mask.shape[-1] != hidden.shape[1]:
        raise ConfigError(
            f"{position} pooling got an attention mask of {mask.shape[-1]} positions for {hidden.shape[1]} hidden "
            "positions; pass a mask over the model's output positions (for audio encoders: over frames), or use "
            "first pooling"
        )
    if position == "first":
        return hidden[:, 0]
    if position == "last":
        if mask is None:
            return hidden[:, -1]
        # index of the last attended position per row (works for left and right padding)
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * mask.long()).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if position == "mean":
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (batch, seq, 1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    raise ConfigError(f"Unknown pooling {position!r}; use first, last or mean.")


# ------------------------------------------------------------------------------------------ shared validation

POOLINGS = ("first", "last", "mean")


def check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}.")
    return value


def check_dropout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ConfigError(f"dropout must be a number in [0, 1), got {value!r}.")
    return float(value)


def check_pooling(value: Any) -> str:
    if value not in POOLINGS:
        raise ConfigError(f"Unknown pooling {value!r}; use one of {', '.join(POOLINGS)}.")
    return str(value)


def check_id2label(id2label: Mapping[int, str] | None, num_labels: int) -> None:
    if id2label is None:
        return
    keys = sorted(int(k) for k in id2label)
    if keys != list(range(len(keys))):
        raise ConfigError(f"id2label keys must be 0..n-1, got {keys}.")
    if len(keys) != num_labels:
        raise ConfigError(f"id2label has {len(keys)} labels but num_labels is {num_labels}; make them agree.")


def mlp(
    hidden_size: int, out_size: int, *, layers: int, activation: str, dropout: float, bias: bool
) -> nn.Sequential:
    """``layers - 1`` blocks of dropout, Linear(d, d), activation, then dropout, Linear(d, out).

    Parameter names (``1``, ``4`` for two layers) follow the `adapters` library's head layout."""
    from adapterhub.methods.bottleneck import make_activation

    modules: list[nn.Module] = []
    for _ in range(layers - 1):
        modules += [
            nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size, bias=bias),
            make_activation(activation),
        ]
    modules += [nn.Dropout(dropout), nn.Linear(hidden_size, out_size, bias=bias)]
    sequential = nn.Sequential(*modules)
    for module in sequential:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return sequential


def check_activation(value: Any) -> str:
    from adapterhub.methods.bottleneck import make_activation

    try:
        make_activation(value)
    except (KeyError, TypeError):
        raise ConfigError(
            f"Unknown activation {value!r}; use relu, swish, gelu, gelu_new, tanh, sigmoid, leakyrelu or identity."
        ) from None
    return str(value)

"""The contract every prediction head follows."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from adapterhub.errors import ConfigError, did_you_mean


@dataclass
class HeadInputs:
    """What a head sees: ``hidden`` (batch, seq, d) last hidden states, the attention mask (batch, seq) and ids."""

    hidden: torch.Tensor
    attention_mask: torch.Tensor | None
    input_ids: torch.Tensor | None
    pooled: torch.Tensor | None = None


@dataclass
class HeadOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class Head(nn.Module):
    """A named head: ``forward(inputs, labels) -> HeadOutput``; ``options()`` are its JSON-ready settings."""

    head_type: ClassVar[str] = ""

    def __init__(self, name: str, hidden_size: int, id2label: Mapping[int, str] | None = None) -> None:
        super().__init__()
        self.head_name = name
        self.hidden_size = hidden_size
        self.id2label: dict[int, str] | None = (
            {int(k): str(v) for k, v in id2label.items()} if id2label else None
        )

    def options(self) -> dict[str, Any]:
        raise NotImplementedError

    def forward(self, inputs: HeadInputs, labels: torch.Tensor | None = None) -> HeadOutput:
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

"""In-memory form of a saved adapter, independent of the layout it was read from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class ModelInfo:
    """The model an adapter was made for."""

    model_type: str
    model_name: str
    hidden_size: int
    num_layers: int | None
    decoder_start: int | None = None  # encoder-decoder models: the first decoder layer (= encoder layers)
    # ``(first layer, hidden_size, num_kv_heads, head_dim)`` of each layer stack when the stacks differ in width
    # (CLIPModel's text and vision towers); empty when every stack has the model-wide ``hidden_size``
    stack_widths: tuple[tuple[int, int, int | None, int | None], ...] = ()
    # ``{path: (in_channels, (kh, kw))}`` of the nn.Conv2d modules the adapter targets by name (what LoHa's and a
    # factored LoKr's flattened kernel does not say; ``spec.factor_shapes``); empty when it targets none
    conv_modules: dict[str, tuple[int, tuple[int, ...]]] = field(default_factory=dict)


@dataclass
class HeadRecord:
    name: str
    head_type: str  # "classification", ... or "static"
    options: dict[str, Any]
    id2label: dict[int, str] | None
    tensors: dict[str, torch.Tensor]


@dataclass
class AdapterRecord:
    name: str
    config: dict[str, Any]  # method config as a dict with "method"
    model: ModelInfo
    tensors: dict[str, torch.Tensor]
    head: HeadRecord | None = None
    layout: str = "adapterhub"
    extra: dict[str, Any] = field(default_factory=dict)

"""``AdapterManifest``: what an adapter directory holds, as the hub and the loaders describe it. Plain data with no
torch, so that the hub server can build one from safetensors headers alone (``hub/server/header_inspect.py``) as
well as from the loaded tensors (``io/manifest.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AdapterManifest:
    layout: str  # "adapterhub", "adapters" (the adapters library's layout) or "peft"
    name: str
    method: str
    config: dict[str, Any]  # canonical method config
    config_hash: str  # sha256 of the canonical JSON of config
    model_type: str
    model_name: str
    hidden_size: int
    num_layers: int | None
    has_head: bool
    head_type: str | None
    id2label: dict[int, str] | None
    num_parameters: int
    files: tuple[str, ...]

"""What every adapter method provides, and the registry that maps a config's ``method`` to its module class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from torch import nn

from adapterhub.configs import MethodConfig
from adapterhub.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class ModelDims:
    """The facts about a model that an adapter's shapes depend on."""

    model_type: str
    hidden_size: int
    num_layers: int
    pre_norm: bool


@dataclass
class SiteInputs:
    """What a hooked site hands to the adapters at one layer and position.

    ``h``: sub-layer output before the residual add, ``(batch, seq, hidden)``; ``residual``: the residual stream
    input of the sub-layer, same shape; ``norm``: the model's LayerNorm after the sub-layer (post-norm models) or
    ``None`` (pre-norm models, where the layer adds ``h`` to the residual itself); ``normed``: ``norm(h +
    residual)`` as the model itself already computed it for this very ``h``, or ``None`` when unknown (anyone
    building a ``SiteInputs`` with a different ``h`` must leave it ``None``). It saves recomputing the model's own
    LayerNorm for the ``original_ln_before`` placement.
    """

    h: torch.Tensor
    residual: torch.Tensor
    norm: Callable[[torch.Tensor], torch.Tensor] | None
    normed: torch.Tensor | None = None

    def original_output(self) -> torch.Tensor:
        """What the model computes at this site without adapters: ``norm(h + residual)`` (post-norm models) or
        ``h + residual``; the model's own value when ``normed`` holds it."""
        if self.normed is not None:
            return self.normed
        summed = self.h + self.residual  # (batch, seq, hidden)
        return self.norm(summed) if self.norm is not None else summed


class AdapterModule(nn.Module):
    """One named adapter: parameters for every layer/site it occupies, built from a config and model dims."""

    config_cls: ClassVar[type[MethodConfig]]

    def __init__(self, name: str, config: MethodConfig, dims: ModelDims) -> None:
        super().__init__()
        self.adapter_name = name
        self.config = config
        self.dims = dims

    def sites_at(self, layer: int) -> tuple[str, ...]:
        """The sites this adapter occupies at ``layer`` (empty if the layer is left out)."""
        raise NotImplementedError

    def forward_site(self, layer: int, site: str, inputs: SiteInputs) -> torch.Tensor:
        """The value that replaces the site's output when only this adapter is active."""
        raise NotImplementedError


M = TypeVar("M", bound=type[AdapterModule])
METHODS: dict[str, type[AdapterModule]] = {}


def register_method(method: str) -> Callable[[M], M]:
    """Class decorator: ``@register_method("bottleneck")`` makes configs with that method build this module."""

    def decorate(cls: M) -> M:
        METHODS[method] = cls
        return cls

    return decorate


def method_for_config(config: MethodConfig) -> type[AdapterModule]:
    if config.method not in METHODS:
        raise ConfigError(
            f"No adapter method {config.method!r}{did_you_mean(config.method, METHODS)}; "
            f"available: {', '.join(sorted(METHODS))}."
        )
    return METHODS[config.method]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

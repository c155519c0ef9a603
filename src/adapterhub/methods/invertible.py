"""MAD-X invertible adapters (Pfeiffer et al. 2020): a bottleneck adapter plus an invertible adapter on the
embeddings.

One adapter name, one module: the bottleneck part sits at the residual points exactly as a ``BottleneckAdapter``
with the same settings; the invertible part is a NICE coupling block applied to the output of the model's input
embedding module (point ``("embedding", "embeddings")``, ``ArchitectureSpec.embeddings``) and, inverted, to the
last hidden states entering an LM head (point ``("embedding", "unembed")``: the model's built-in LM head through a
pre-hook on its output embeddings, and the flexible ``causal_lm`` / ``masked_lm`` heads).

NICE coupling (as the `adapters` library's ``NICECouplingBlock``), ``x = [x1, x2]`` split at ``d // 2``::

    forward:  y1 = x1 + F(x2);   y2 = x2 + G(y1)
    inverse:  x2 = y2 - G(y1);   x1 = y1 - F(x2)

with ``F: d - d//2 -> d//2`` and ``G: d//2 -> d - d//2`` each ``Linear(n, n // r) -> f -> Linear(n // r, out)``
(``r = inv_adapter_reduction_factor``, ``f`` the config's ``non_linearity``), weights N(0, 0.02) and zero biases.

Composition: in a Stack only the first adapter that has an invertible part applies it (the `adapters` library
applies the invertible adapter of the setup's first adapter: the same in a Stack whose first adapter has one,
e.g. ``Stack("lang", "task")``); every row block of a BatchSplit uses its own adapter's, as separate passes would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    EMBEDDING,
    EMBEDDING_LAYER,
    AdapterModule,
    EmbeddingState,
    ModelDims,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.methods.bottleneck import BottleneckAdapter, make_activation
from adapterhub.spec.configs import PRESETS, BottleneckConfig, register_config

INV_ADAPTERS = ("nice",)
# "mask": the attention mask before the model builds it (prompt tuning extends it); an invertible adapter leaves
# it alone but, being first in its Stack, keeps a later prompt from applying there as at "embeddings".
EMBEDDING_POINTS: tuple[Point, ...] = ((EMBEDDING, "embeddings"), (EMBEDDING, "mask"), (EMBEDDING, "unembed"))


@dataclass(frozen=True, kw_only=True)
class InvertibleBottleneckConfig(BottleneckConfig):
    """A bottleneck adapter (every ``BottleneckConfig`` option) plus an invertible adapter on the embeddings:
    ``inv_adapter`` (``"nice"``) and ``inv_adapter_reduction_factor`` (2). Presets ``pfeiffer+inv`` (alias
    ``seq_bn_inv``) and ``houlsby+inv`` (alias ``double_seq_bn_inv``).

    Parameters of the invertible part, ``a = d // 2``, ``b = d - a``, ``m = b // r``, ``n = a // r``:
    ``F = b·m + m + m·a + a`` plus ``G = a·n + n + n·b + b`` (296,064 on BERT-base)."""

    method: ClassVar[str] = "bottleneck_inv"

    inv_adapter: str = "nice"
    inv_adapter_reduction_factor: float = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.inv_adapter not in INV_ADAPTERS:
            raise ConfigError(
                f"inv_adapter={self.inv_adapter!r} is not supported; choose one of {', '.join(INV_ADAPTERS)} "
                "(GLOW coupling blocks are not implemented)."
            )
        factor = self.inv_adapter_reduction_factor
        if not (isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 0):
            raise ConfigError(f"inv_adapter_reduction_factor must be a positive number, got {factor!r}.")


def _with_inv(preset: str) -> InvertibleBottleneckConfig:
    base = PRESETS[preset]().to_dict()
    base.pop("method")
    return InvertibleBottleneckConfig.from_dict(base)


_INV_PRESETS = {
    "pfeiffer+inv": lambda: _with_inv("pfeiffer"),
    "houlsby+inv": lambda: _with_inv("houlsby"),
}
register_config(
    InvertibleBottleneckConfig,
    {
        **_INV_PRESETS,
        "seq_bn_inv": _INV_PRESETS["pfeiffer+inv"],
        "double_seq_bn_inv": _INV_PRESETS["houlsby+inv"],
    },
)


def _subnet(d_in: int, d_out: int, reduction: float, non_linearity: str) -> nn.Sequential:
    width = int(d_in // reduction)
    return nn.Sequential(nn.Linear(d_in, width), make_activation(non_linearity), nn.Linear(width, d_out))


class NICECoupling(nn.Module):
    """A NICE coupling block over the last dimension (``(..., d) -> (..., d)``), exactly invertible."""

    def __init__(self, dim: int, reduction: float, non_linearity: str) -> None:
        super().__init__()
        self.split = dim // 2
        rest = dim - self.split
        self.F = _subnet(rest, self.split, reduction, non_linearity)
        self.G = _subnet(self.split, rest, reduction, non_linearity)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, 0.02)
                    module.bias.zero_()

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        x1, x2 = x[..., : self.split], x[..., self.split :]
        if not rev:
            y1 = x1 + self.F(x2)
            y2 = x2 + self.G(y1)
        else:
            y2 = x2 - self.G(x1)
            y1 = x1 - self.F(y2)
        return torch.cat((y1, y2), -1)


@register_method("bottleneck_inv")
class InvertibleBottleneckAdapter(BottleneckAdapter):
    """A bottleneck adapter (``layers``, as ``BottleneckAdapter``) plus ``inv``, a ``NICECoupling`` on the
    embeddings. Fuse and Average are refused (an average of invertible maps has no inverse that undoes it)."""

    config_cls = InvertibleBottleneckConfig
    config: InvertibleBottleneckConfig
    composable = frozenset({"Stack", "Split", "BatchSplit"})

    def __init__(self, name: str, config: InvertibleBottleneckConfig, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        self.inv = NICECoupling(
            dims.embedding_size or dims.hidden_size, config.inv_adapter_reduction_factor, config.non_linearity
        )

    def points(self, layer: int) -> tuple[Point, ...]:
        points = super().points(layer)
        return points + EMBEDDING_POINTS if layer == EMBEDDING_LAYER else points

    def kinds(self) -> frozenset[str]:
        return super().kinds() | {EMBEDDING}

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> Any:
        if point[0] != EMBEDDING:
            return super().stack_step(layer, point, running, inputs)
        if running.applied:  # an earlier adapter of this Stack applied its invertible part
            return running
        if point[1] == "mask":
            return EmbeddingState(running.value, applied=True)
        return EmbeddingState(self.inv(running.value, rev=point[1] == "unembed"), applied=True)

    def stack_leave(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> torch.Tensor:
        if point[0] != EMBEDDING:
            return super().stack_leave(layer, point, running, inputs)
        return inputs.finish(running)

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        if point[0] == EMBEDDING:
            return None  # row blocks one by one, each through its own adapter's coupling block
        return super().batch_split_grouped(modules, layer, point, inputs, sizes)

    def split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        bounds: Sequence[tuple[int, int]],
    ) -> torch.Tensor | None:
        if point[0] == EMBEDDING:
            return None  # token slices one by one, each through its own adapter's coupling block
        return super().split_grouped(modules, layer, point, inputs, bounds)

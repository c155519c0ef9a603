"""LoRA (Hu et al. 2021): a low-rank update of linear projections.

For a projection ``y = W x + b`` with ``W: (d_out, d_in)``, LoRA adds ``ΔW = s · B A`` with ``A: (r, d_in)`` and
``B: (d_out, r)``::

    y' = W x + b + s · B (A dropout(x))          s = alpha / r   (use_rslora: alpha / sqrt(r))

``A`` starts Kaiming-uniform (``a = sqrt(5)``, as ``nn.Linear``) or, with ``init="gaussian"``, normal with std
``1 / r``; ``B`` starts at zero, so a new adapter is the exact identity. Parameters: ``r · (d_in + d_out)`` per
target and layer. Because the update is a change of weights, ``merge_adapter`` folds ``s · B A`` into ``W``.

Composition at a projection (``LinearInputs``: input ``x``, output ``y``): a Stack adds each adapter's update to
the running output (``y + Δ_a x + Δ_b x``); Split, BatchSplit, Parallel and Average work on rows/positions of ``x``
and ``y``; a BatchSplit of LoRA adapters of equal rank and dropout runs as one grouped computation (each row block
through its own ``A`` and ``B``). Fuse does not apply (LoRA has no output vector of its own to mix).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.methods.base import (
    LINEAR,
    AdapterModule,
    LinearInputs,
    LinearRunning,
    ModelDims,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.spec.configs import LoRAConfig

_KEY = re.compile(r"^layers\.(\d+)\.([a-z_]+)\.lora_([AB])$")


class LoRALayer(nn.Module):
    """The update of one projection: ``delta(x) = s · dropout(x) Aᵀ Bᵀ``, ``(..., d_in) -> (..., d_out)``."""

    def __init__(self, d_in: int, d_out: int, config: LoRAConfig) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(config.r, d_in))  # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(d_out, config.r))  # (d_out, r)
        self.dropout = nn.Dropout(config.dropout)
        self.scaling = config.scaling
        with torch.no_grad():
            if config.init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / config.r)
            else:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        z = self._down(x)  # (..., r)
        return (z @ self.lora_B.t()) * self.scaling  # (..., d_out)

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout.p > 0:
            x = self.dropout(x)
        return x @ self.lora_A.t()  # (..., r)

    def add_to(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y + delta(x)`` with the up-projection, scaling and addition in one ``addmm`` (one pass over ``y``
        instead of three): ``(..., d_out)``."""
        z = self._down(x)  # (..., r)
        out = torch.addmm(
            y.reshape(-1, y.shape[-1]), z.reshape(-1, z.shape[-1]), self.lora_B.t(), alpha=self.scaling
        )
        return out.view(y.shape)

    def weight_delta(self) -> torch.Tensor:
        """``s · B A``: ``(d_out, d_in)``."""
        return (self.lora_B @ self.lora_A) * self.scaling


@register_method("lora")
class LoRAAdapter(AdapterModule):
    """LoRA over all layers: ``layers[str(i)][point]`` is a ``LoRALayer`` for each target projection."""

    config_cls = LoRAConfig
    config: LoRAConfig
    composable: ClassVar[frozenset[str]] = frozenset({"Stack", "Split", "BatchSplit", "Parallel", "Average"})
    mergeable: ClassVar[bool] = True

    def __init__(self, name: str, config: LoRAConfig, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        dims.check_leave_out(config.leave_out)
        shapes = {point: dims.linear_shape(point) for point in config.targets}  # raises for unknown points
        self.layers = nn.ModuleDict(
            {
                str(i): nn.ModuleDict(
                    {p: LoRALayer(*shapes[p], config) for p in dims.points_at(i, config.targets)}
                )
                for i in range(dims.num_layers)
                # cross_*: decoder layers only
                if i not in config.leave_out and dims.points_at(i, config.targets)
            }
        )
        # layer -> its points (every target, except decoder-only ones in encoder layers)
        self._points = {
            int(i): tuple((LINEAR, p) for p in dims.points_at(int(i), config.targets)) for i in self.layers
        }

    @classmethod
    def linear_shapes_from(cls, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, int, int], ...]:
        """The ``(point, d_in, d_out)`` that saved weights imply (to validate files without a model)."""
        d_in: dict[str, int] = {}
        d_out: dict[str, int] = {}
        for key, tensor in tensors.items():
            match = _KEY.match(key)
            if match and tensor.dim() == 2:
                point, which = match.group(2), match.group(3)
                if which == "A":
                    d_in[point] = int(tensor.shape[1])
                else:
                    d_out[point] = int(tensor.shape[0])
        return tuple((p, d_in[p], d_out[p]) for p in d_in if p in d_out)

    def points(self, layer: int) -> tuple[Point, ...]:
        return self._points.get(layer, ()) if str(layer) in self.layers else ()

    def kinds(self) -> frozenset[str]:
        return frozenset({LINEAR})

    def layer_at(self, layer: int, point: str) -> LoRALayer:
        return self.layers[str(layer)][point]  # type: ignore[index,return-value]

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> LinearRunning:
        x = inputs.x  # type: ignore[attr-defined]
        return running.with_y(self.layer_at(layer, point[1]).add_to(running.y, x))  # type: ignore[no-any-return]

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        """Row block ``k`` through adapter ``k``'s ``A`` and ``B`` in two batched matmuls (peft's mixed-adapter
        batch). Equal sizes: ``(K, rows·T, d_in)`` against stacked ``(K, d_in, r)``; otherwise weights gathered
        per row. Needs equal rank and dropout; else None (the interpreter runs the row blocks one by one)."""
        if not all(isinstance(m, LoRAAdapter) for m in modules):
            return None
        layers: list[LoRALayer] = [m.layer_at(layer, point[1]) for m in modules]  # type: ignore[attr-defined,operator]
        first = layers[0]
        if any(x.lora_A.shape[0] != first.lora_A.shape[0] or x.dropout.p != first.dropout.p for x in layers):
            return None
        assert isinstance(inputs, LinearInputs)
        x, y = inputs.x, inputs.y  # (B, T, d_in), (B, T, d_out)
        if first.dropout.p > 0:
            x = first.dropout(x)
        a = torch.stack([m.lora_A for m in layers]).transpose(1, 2)  # (K, d_in, r)
        b = torch.stack([m.lora_B for m in layers]).transpose(1, 2)  # (K, r, d_out)
        scale = torch.tensor([m.scaling for m in layers], dtype=y.dtype, device=y.device).view(-1, 1, 1)
        if len(set(sizes)) == 1:
            groups = x.reshape(len(layers), -1, x.shape[-1])  # (K, rows·T, d_in)
        else:
            owner = torch.repeat_interleave(
                torch.arange(len(layers), device=x.device), torch.tensor(list(sizes), device=x.device)
            )  # (B,)
            a, b, scale = a[owner], b[owner], scale[owner]
            groups = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, d_in)
        delta = torch.bmm(torch.bmm(groups, a), b) * scale  # (G, rows, d_out)
        return y + delta.reshape(y.shape)

    def merged_deltas(self) -> Iterator[tuple[int, str, torch.Tensor]]:
        for key, sites in self.layers.items():
            for point, lora in sites.items():  # type: ignore[union-attr,operator]
                yield int(key), point, lora.weight_delta()

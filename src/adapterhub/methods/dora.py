"""DoRA (Liu et al. 2024): LoRA with a learned magnitude per output row, as peft computes it.

For a projection ``y = W x + b`` (``W: (d_out, d_in)``) with a LoRA update ``s · B A`` (``methods.lora``) and a
magnitude ``m: (d_out,)`` initialised to ``‖W‖`` per output row when the adapter is added (``init_from_base``)::

    n  = ‖W + s · B A‖ per output row       (computed without gradient, as peft: DoRA paper section 4.3)
    y' = y + (m / n − 1) ⊙ (W x) + (m / n) ⊙ s · B A dropout(x)     = b + (m / n) ⊙ (W + s B A) x  without dropout

With dropout active, ``W x`` is ``W dropout(x)`` as in peft. A new adapter is the identity (B = 0, m = ‖W‖).
Parameters: LoRA's ``r · (d_in + d_out)`` plus ``d_out`` per target and layer.

Merging: ``W' = (m / n) ⊙ (W + s B A)`` per row; the norms ``n`` of the merge are kept so that unmerging restores
``W = W' n / m − s B A``. On an ``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` targeted by name the same per output
channel (``DoRAConvLayer``). Composition: as LoRA (a Stack adds the updates, each computed from the point's base
value), BatchSplit runs the row blocks one by one; Fuse is refused.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    AdapterModule,
    BaseWeights,
    LinearInputs,
    LinearRunning,
    ModelDims,
    NamedModule,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.methods.lora_layers import ConvLoRALayer
from adapterhub.spec.configs import LoRAConfig, register_config


@dataclass(frozen=True, kw_only=True)
class DoRAConfig(LoRAConfig):
    """DoRA: LoRA's options (``r``, ``alpha``, ``dropout``, ``targets``, ``use_rslora``, ``init``, ``leave_out``)
    plus a magnitude vector per target. Parameters: ``r · (d_in + d_out) + d_out`` per target and layer."""

    method: ClassVar[str] = "dora"


register_config(DoRAConfig, presets={"dora": lambda: DoRAConfig()})


def weight_norm(weight: torch.Tensor, lora: LoRALayer) -> torch.Tensor:
    """``‖W + s B A‖`` per output row (a convolution's: per output channel, over its whole kernel), without
    gradient: ``(d_out,)``."""
    with torch.no_grad():
        combined = weight + lora.weight_delta().to(weight.dtype)
        return torch.linalg.vector_norm(combined.flatten(1), dim=1).to(weight.dtype)


def _per_row(vector: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``vector`` (d_out entries) shaped to scale ``weight``'s output rows / channels: ``(d_out, 1, ...)``."""
    return vector.reshape(-1, *(1,) * (weight.dim() - 1))


class DoRALayer(LoRALayer):
    """LoRA's ``A``, ``B`` and the magnitude ``m`` ``(d_out,)`` of one projection."""

    def __init__(
        self,
        d_in: int,
        d_out: int,
        config: LoRAConfig,
        r: int | None = None,
        alpha: float | None = None,
        *,
        initialise: bool = True,
    ) -> None:
        """``initialise=False``: ``A``, ``B`` and ``m`` left unset for a load to set (all three are saved)."""
        super().__init__(d_in, d_out, config, r, alpha, initialise=initialise)
        self.magnitude = nn.Parameter(torch.ones(d_out) if initialise else torch.empty(d_out))  # (d_out,)

    def add_dora(self, running: torch.Tensor, inputs: LinearInputs) -> torch.Tensor:
        weight = inputs.require_weight("DoRA")
        x = inputs.x
        scale = (self.magnitude / weight_norm(weight, self)).view(1, -1)  # (1, d_out)
        if self.dropout.p > 0 and self.training:
            x = self.dropout(x)
            base = inputs.projection(x)  # W dropout(x)
        else:
            base = inputs.projection()  # W x
        update = (x @ self.lora_A.t()) @ self.lora_B.t()  # (..., d_out)
        return running + (scale - 1) * base + scale * update * self.scaling


class DoRAConvLayer(ConvLoRALayer):
    """DoRA on an ``nn.Conv1d`` / ``Conv2d`` / ``Conv3d`` targeted by name (peft's ``_DoraConvNdLayer``): LoRA's
    convolution factors and the magnitude ``m`` per output channel, held as peft holds it, ``(1, c_out, 1, ...)``::

        n  = ‖W + s · B∘A‖ per output channel (over c_in and the kernel), without gradient
        y' = y + (m / n − 1) ⊙ conv(x, W) + (m / n) ⊙ s · B(A(dropout(x)))       (⊙ along the channel axis)

    with ``conv(x, W)`` the module's convolution without its bias (of ``dropout(x)`` while dropout is active)."""

    def __init__(
        self,
        module: NamedModule,
        config: LoRAConfig,
        r: int | None = None,
        alpha: float | None = None,
        *,
        initialise: bool = True,
    ) -> None:
        """``initialise=False``: ``A``, ``B`` and ``m`` left unset for a load to set (all three are saved)."""
        super().__init__(module, config, r, alpha, initialise=initialise)
        kernel = module.conv[0]  # type: ignore[index]
        shape = (1, module.d_out, *(1,) * len(kernel))  # (1, c_out, 1, ...)
        self.magnitude = nn.Parameter(torch.ones(shape) if initialise else torch.empty(shape))

    def add_dora(self, running: torch.Tensor, inputs: LinearInputs) -> torch.Tensor:
        weight = inputs.require_weight("DoRA")  # (c_out, c_in, *kernel)
        x = inputs.x  # (N, c_in, *spatial)
        norm = weight_norm(weight, self).view(self.magnitude.shape)  # (1, c_out, 1, ...)
        scale = self.magnitude / norm
        if self.dropout.p > 0 and self.training:
            x = self.dropout(x)
            base = self.conv_fn(x, weight, stride=self.stride, padding=self.padding)  # conv(dropout(x), W)
        elif inputs.untouched:
            base = inputs.y if inputs.bias is None else inputs.y - inputs.bias.view(norm.shape[1:])
        else:
            base = self.conv_fn(x, weight, stride=self.stride, padding=self.padding)  # (N, c_out, *spatial')
        update = self.conv_fn(
            self.conv_fn(x, self.lora_A, stride=self.stride, padding=self.padding), self.lora_B
        )
        return running + (scale - 1) * base + scale * update * self.scaling


@register_method("dora")
class DoRAAdapter(LoRAAdapter):
    """DoRA over all layers: ``layers[str(i)][point]`` is a ``DoRALayer``."""

    config_cls = DoRAConfig
    config: DoRAConfig
    mergeable: ClassVar[bool] = True
    layer_class: ClassVar[type[LoRALayer]] = DoRALayer
    conv_layer_class: ClassVar[type[ConvLoRALayer]] = DoRAConvLayer

    # built for a load without drawing or filling A, B and m (all in its state dict; m is computed from the base
    # only on add, by init_from_base); no base-modifying init
    init_on_load: ClassVar[bool] = False

    def __init__(self, name: str, config: DoRAConfig, dims: ModelDims, *, initialise: bool = True) -> None:
        super().__init__(name, config, dims, initialise=initialise)
        self._merge_norms: dict[tuple[int, str], torch.Tensor] = {}

    def init_from_base(self, base: BaseWeights) -> None:
        """``m = ‖W‖`` per output row of each target projection."""
        with torch.no_grad():
            for index, point, layer in self.lora_targets():
                weight, _ = base(index, point)
                magnitude: torch.Tensor = layer.magnitude  # type: ignore[assignment]
                norm = torch.linalg.vector_norm(weight.float().flatten(1), dim=1)  # (d_out,)
                magnitude.copy_(norm.view(magnitude.shape).to(magnitude.dtype))

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> LinearRunning:
        assert isinstance(inputs, LinearInputs)
        y = self.layer_at(layer, point).add_dora(running.y, inputs)  # type: ignore[attr-defined,operator]
        return running.with_y(y)  # type: ignore[no-any-return]

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        return None  # row blocks one by one

    def merged_deltas(self) -> Iterator[tuple[int, str, torch.Tensor]]:
        raise ConfigError("DoRA's update depends on the base weights: merge with model.merge_adapter(name).")

    def merge_updates(
        self, base: BaseWeights, merge: bool
    ) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor | None]]:
        """Merge: ``W' = (m / n) (W + s B A)``, keeping ``n``; unmerge: ``W = W' n / m − s B A``."""
        for layer, point, dora in self.lora_targets():
            weight, _ = base(layer, point)  # (d_out, d_in)
            with torch.no_grad():
                delta = dora.weight_delta().to(weight.dtype)
                magnitude = _per_row(dora.magnitude.to(weight.dtype), weight)  # type: ignore[arg-type]
                if merge:
                    norm = _per_row(weight_norm(weight, dora), weight)  # (d_out, 1, ...)
                    self._merge_norms[(layer, point)] = norm
                    new = magnitude / norm * (weight + delta)
                else:
                    norm = self._merge_norms.pop((layer, point))
                    new = weight * (norm / magnitude) - delta
            yield layer, point, new - weight, None

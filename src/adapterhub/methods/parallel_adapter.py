"""Parallel bottleneck adapters (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer Learning").

The adapter sits beside a sub-layer (FFN and/or attention) instead of after it: it reads the sub-layer's *input*
(the residual stream that enters the sub-block, before any pre-norm LayerNorm) and its scaled output is added to
the sub-layer's output, before the model's residual add (and, in post-norm models, before the LayerNorm)::

    post-norm (BERT):     out = LN(h + s·A(x) + x)
    pre-norm (GPT-2 ...): stream = x + h + s·A(x)

with ``h = sublayer(x)`` and ``A(x) = W_up · f(W_down · x + b_down) + b_up``. This is what the `adapters`
library's ``ParallelAdapter`` (``is_parallel=True``, preset ``par_bn``) computes: its ``pre_forward`` hands the
sub-layer input to the adapter, its ``forward`` returns ``scaling · A(x)`` (``ln_after`` normalises that
delta), and ``post_forward`` adds it to ``h`` before the model's own residual add and LayerNorm
(``original_ln_after``; with ``original_ln_after=False`` the point's output is ``h + s·A(x)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from adapterhub.errors import ConfigError
from adapterhub.methods import bottleneck_grouped
from adapterhub.methods.base import AdapterModule, Point, PointInputs, ResidualInputs, register_method
from adapterhub.methods.bottleneck import (
    BottleneckAdapter,
    BottleneckLayer,
    group_key,
    leave_site,
)
from adapterhub.spec.configs import PRESET_ALIASES, BottleneckConfig, register_config


@dataclass(frozen=True, kw_only=True)
class ParallelConfig(BottleneckConfig):
    """A bottleneck adapter in parallel to a sub-layer (defaults: the `adapters` library's ``ParBnConfig``).

    The options of ``BottleneckConfig`` that place a *sequential* adapter's input and residual
    (``original_ln_before``, ``residual_before_ln``, ``adapter_residual_before_ln``) do not apply: a parallel
    adapter always reads the sub-layer input and adds to the sub-layer output; they must keep the defaults of
    ``ParBnConfig`` (False, True, False), which that library ignores for parallel adapters too.
    ``ln_after`` normalises the scaled delta (as that library does); ``original_ln_after`` as for bottleneck.
    """

    method: ClassVar[str] = "parallel"

    reduction_factor: float | tuple[tuple[str, float], ...] = 2
    original_ln_before: bool = False
    residual_before_ln: bool | str = True  # ParBnConfig inherits BnConfig's True; unused by parallel adapters
    scaling: float | str = 4.0
    init_weights: str = "mam_adapter"

    def __post_init__(self) -> None:
        super().__post_init__()
        fixed = {
            "original_ln_before": False,
            "residual_before_ln": True,
            "adapter_residual_before_ln": False,
        }
        for name, value in fixed.items():
            if getattr(self, name) != value:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} does not apply to a parallel adapter (it reads the sub-layer "
                    f"input and adds to the sub-layer output); leave it at {value!r}, or use method 'bottleneck' "
                    "for a sequential adapter."
                )


register_config(ParallelConfig, {"parallel": lambda: ParallelConfig()})
PRESET_ALIASES.setdefault("par_bn", "parallel")  # the `adapters` library's name


def _parallel_delta(layer: BottleneckLayer, x: torch.Tensor) -> torch.Tensor:
    """``s·A(x)``, with the adapter's own LayerNorm after it when ``ln_after`` (no residual inside)."""
    out = layer.delta(x)
    return layer.norm_after(out) if layer.norm_after is not None else out


@register_method("parallel")
class ParallelAdapter(BottleneckAdapter):
    """Parallel bottleneck adapters: same parameters (and names) as ``BottleneckAdapter``, other placement.

    Composition: alone, in Split / BatchSplit / Parallel / Average (each as separate passes would compute), and
    as the first adapter of a Stack (a following sequential adapter then sees ``h + s·A(x)`` as the sub-layer
    output). Not after another adapter in a Stack, and not in Fuse: the `adapters` library runs those setups
    but silently drops the earlier adapters' outputs (Stack) or adds the sub-layer input twice (Fuse), so we
    refuse them.
    """

    config_cls = ParallelConfig  # type: ignore[assignment]
    config: ParallelConfig
    sequential: ClassVar[bool] = False
    composable: ClassVar[frozenset[str]] = frozenset({"Stack", "Split", "BatchSplit", "Parallel", "Average"})

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> torch.Tensor:
        assert isinstance(inputs, ResidualInputs)
        if running is not inputs.h:
            raise ConfigError(
                f"Parallel adapter {self.adapter_name!r} can only be the first adapter of a Stack: it reads the "
                "sub-layer input, so an adapter before it would have no effect (the `adapters` library drops it "
                "silently)."
            )
        return running + _parallel_delta(self.layer_at(layer, point[1]), inputs.residual)

    def stack_leave(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> torch.Tensor:
        return leave_site(self.config, running, inputs, self.dims.pre_norm)  # type: ignore[arg-type]

    def fuse_enter(self, layer: int, point: Point, inputs: PointInputs) -> tuple[torch.Tensor, torch.Tensor]:
        raise ConfigError(
            f"Fuse cannot hold parallel adapter {self.adapter_name!r}: AdapterFusion mixes sequential bottleneck "
            "adapters (the `adapters` library's Fuse of parallel adapters adds the sub-layer input twice)."
        )

    def fuse_placement(self) -> Any:
        return self.fuse_enter(0, ("residual", ""), None)  # type: ignore[arg-type]

    def fuse_deltas(
        self, modules: Sequence[AdapterModule], layer: int, point: Point, x: torch.Tensor
    ) -> torch.Tensor:
        return self.fuse_enter(layer, point, None)  # type: ignore[arg-type,return-value]

    def grouped_stacks(
        self, modules: Sequence[AdapterModule], layer: int, point: Point
    ) -> bottleneck_grouped.Stacks | None:
        """As ``BottleneckAdapter.grouped_stacks`` for plain ``ParallelAdapter``s (not sequential)."""
        if not all(type(m) is ParallelAdapter for m in modules):
            return None
        return bottleneck_grouped.stacks(modules, layer, point, group_key)  # type: ignore[arg-type]

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        """Row block ``k`` (``sizes[k]`` rows) through parallel adapter ``k``: ``y = h + δ(input)`` with the K
        adapters' deltas as batched matmuls over their rows (``bottleneck_grouped.batch_split_deltas``), leaving
        the point once. None unless all are plain ``ParallelAdapter``s with one ``group_key`` (as ``split_grouped``)."""
        st = self.grouped_stacks(modules, layer, point)
        if st is None:
            return None
        assert isinstance(inputs, ResidualInputs)
        y = inputs.h + bottleneck_grouped.batch_split_deltas(st, inputs.residual, sizes)  # (B, T, d)
        return leave_site(self.config, y, inputs, self.dims.pre_norm)  # type: ignore[arg-type]

    def split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        bounds: Sequence[tuple[int, int]],
    ) -> torch.Tensor | None:
        """Token slices ``bounds[k]`` through parallel adapter ``k`` as one computation: ``y = h + δ(input)`` with
        the K adapters' deltas as batched matmuls over their slices of the sub-layer input, leaving the point once;
        positions in no slice keep the point's base value. None unless all are plain ``ParallelAdapter``s with one
        ``group_key`` (placement, width, activation, dropout; no ``ln_after``)."""
        if not isinstance(inputs, ResidualInputs) or inputs.h.dim() != 3:
            return None
        st = self.grouped_stacks(modules, layer, point)
        if st is None:
            return None
        y = inputs.h + bottleneck_grouped.split_deltas(st, inputs.residual, bounds)  # (B, T, d)
        out = leave_site(self.config, y, inputs, self.dims.pre_norm)  # type: ignore[arg-type]
        return bottleneck_grouped.keep_base(out, inputs, bounds)

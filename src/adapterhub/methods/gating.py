"""Gated LoRA, bottleneck adapters and prefix tuning, as the `adapters` library computes them with
``use_gating=True`` (UniPELT, Mao et al. 2022). Kept in their own methods (``gated_lora``, ``gated_bottleneck``,
``gated_prefix_tuning``) so that the configs, hashes and files of the ungated methods stay unchanged.

Every gate is a per-layer (per point) ``Linear(d, g)`` on an input ``u`` of shape ``(B, T, d)``; its value is
``mean_T sigmoid(gate(u))``, one number per row (``(B, g)``), which multiplies the method's update:

- LoRA: ``u = x`` the projection input; ``y' = y + gate · B A dropout(x)``, replacing the scaling ``alpha / r``
  (their ``LoRA.forward``). Gate init: weight N(0, 0.02), bias as ``nn.Linear``.
- bottleneck: ``u`` = the adapter input (before ``ln_before``); ``y = r + gate · dropout(s · A(u))`` (their
  ``Adapter.forward``). Gate init: weight N(0, 0.02), bias 0.
- prefix tuning: ``u`` = the self-attention module's input hidden states (``AttentionInputs.hidden``); keys
  times ``gate[:, 0]``, values times ``gate[:, -1]`` (``g = 1`` with ``shared_gating``, else 2; their
  ``PrefixTuningLayer.compose_single``). Gate init: weight N(0, 0.02), bias as ``nn.Linear``.

VeRA's gated form (``use_gating`` of ``methods.vera``, the `adapters` library's gated VeRA) uses the LoRA gate.

Weights: LoRA ``layers.<i>.<point>.gate.{weight,bias}``, bottleneck ``layers.<i>.<site>.gate.{weight,bias}``,
prefix tuning ``gates.<i>.{weight,bias}``. Gated adapters cannot be merged, do not group in BatchSplit (row
blocks run one by one) and are not fused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    AdapterModule,
    AttentionInputs,
    LinearRunning,
    ModelDims,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.methods.bottleneck import BottleneckAdapter, BottleneckLayer
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.methods.prefix_tuning import PrefixTuningAdapter, PrefixTuningConfig
from adapterhub.spec.configs import BottleneckConfig, LoRAConfig, register_config

NOT_FUSED = frozenset({"Stack", "Split", "BatchSplit", "Parallel", "Average"})


def gate_value(gate: nn.Linear, u: torch.Tensor) -> torch.Tensor:
    """``mean_T sigmoid(gate(u))``: ``(B, T, d) -> (B, g)``."""
    return torch.mean(torch.sigmoid(gate(u)), dim=1)


def normal_gate(d: int, outputs: int, zero_bias: bool) -> nn.Linear:
    """``Linear(d, outputs)``, weight ``N(0, 0.02)``, bias as ``nn.Linear`` or zero (the `adapters` library's)."""
    gate = nn.Linear(d, outputs)
    with torch.no_grad():
        gate.weight.normal_(0.0, 0.02)
        if zero_bias:
            gate.bias.zero_()
    return gate


# ------------------------------------------------------------------------------------------------ LoRA


@dataclass(frozen=True, kw_only=True)
class GatedLoRAConfig(LoRAConfig):
    """LoRA with a gate per target projection instead of the scaling (``use_gating=True`` in `adapters`)."""

    method: ClassVar[str] = "gated_lora"


@register_method("gated_lora")
class GatedLoRAAdapter(LoRAAdapter):
    config_cls = GatedLoRAConfig  # type: ignore[assignment]
    mergeable: ClassVar[bool] = False

    def __init__(self, name: str, config: GatedLoRAConfig, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        for _, _, lora in self.lora_targets():
            lora.gate = normal_gate(lora.lora_A.shape[1], 1, zero_bias=False)

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> LinearRunning:
        lora: LoRALayer = self.layer_at(layer, point)
        x = inputs.x  # type: ignore[attr-defined]  # (B, T, d_in)
        update = lora._down(x) @ lora.lora_B.t()  # (B, T, d_out)
        gate = gate_value(lora.gate, x).unsqueeze(-1)  # type: ignore[arg-type]  # (B, 1, 1)
        return running.with_y(running.y + update * gate)  # type: ignore[no-any-return]

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        return None

    def merged_deltas(self) -> Any:
        return AdapterModule.merged_deltas(self)


# ------------------------------------------------------------------------------------------------ bottleneck


@dataclass(frozen=True, kw_only=True)
class GatedBottleneckConfig(BottleneckConfig):
    """A sequential bottleneck adapter whose output is gated (``use_gating=True`` in `adapters`)."""

    method: ClassVar[str] = "gated_bottleneck"


class GatedBottleneckLayer(BottleneckLayer):
    def __init__(self, hidden_size: int, width: int, config: BottleneckConfig) -> None:
        super().__init__(hidden_size, width, config)
        self.gate = normal_gate(hidden_size, 1, zero_bias=True)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return super().delta(x) * gate_value(self.gate, x).unsqueeze(-1)  # (B, T, d) * (B, 1, 1)


@register_method("gated_bottleneck")
class GatedBottleneckAdapter(BottleneckAdapter):
    config_cls = GatedBottleneckConfig  # type: ignore[assignment]
    composable: ClassVar[frozenset[str]] = NOT_FUSED

    def make_layer(
        self, hidden_size: int, width: int, config: BottleneckConfig, *, initialise: bool = True
    ) -> BottleneckLayer:
        if not initialise:  # never asked: init_on_load is True here (build_for_load reads each class's own)
            raise ConfigError(f"{type(self).__name__} builds its layers initialised only.")
        return GatedBottleneckLayer(hidden_size, width, config)

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        return None

    def split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        bounds: Sequence[tuple[int, int]],
    ) -> torch.Tensor | None:
        return None  # each slice's gate reads its own tokens: the slices one by one


# ------------------------------------------------------------------------------------------------ prefix tuning


@dataclass(frozen=True, kw_only=True)
class GatedPrefixTuningConfig(PrefixTuningConfig):
    """Prefix tuning with a gate per layer on the attention input (``use_gating=True`` in `adapters`);
    ``shared_gating``: one gate for keys and values (else one each)."""

    method: ClassVar[str] = "gated_prefix_tuning"  # type: ignore[misc]

    shared_gating: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.shared_gating, bool):
            raise ConfigError(f"shared_gating must be true or false, got {self.shared_gating!r}.")


@register_method("gated_prefix_tuning")
class GatedPrefixTuningAdapter(PrefixTuningAdapter):
    config_cls = GatedPrefixTuningConfig  # type: ignore[assignment]
    config: GatedPrefixTuningConfig

    def __init__(self, name: str, config: GatedPrefixTuningConfig, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        outputs = 1 if config.shared_gating else 2
        self.gates = nn.ModuleDict(
            {
                str(layer): normal_gate(dims.hidden_size_at(layer), outputs, zero_bias=False)
                for layer in self.slots
            }
        )

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> AttentionInputs:
        assert isinstance(inputs, AttentionInputs)
        hidden = getattr(inputs, "hidden", None)
        if hidden is None:
            raise ConfigError(
                f"Gated prefix tuning ({self.adapter_name!r}) needs the self-attention input, which this call did "
                "not provide."
            )
        keys, values = self.prefix(layer, point[1])  # (1, H, P, D); a layer's gate serves self and cross
        gate = gate_value(self.gates[str(layer)], hidden)  # type: ignore[arg-type]  # (B, g)
        keys = keys * gate[:, 0].view(-1, 1, 1, 1)
        values = values * gate[:, -1].view(-1, 1, 1, 1)
        return running.with_prefix(keys, values)  # type: ignore[no-any-return]


# presets: the ungated defaults (LoRA r 8 alpha 8 on q, v; Pfeiffer placement, reduction 16; prefix length 30)
register_config(GatedLoRAConfig, {"gated_lora": GatedLoRAConfig})
register_config(GatedBottleneckConfig, {"gated_bottleneck": GatedBottleneckConfig})
register_config(GatedPrefixTuningConfig, {"gated_prefix_tuning": GatedPrefixTuningConfig})

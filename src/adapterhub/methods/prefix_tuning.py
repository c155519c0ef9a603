"""Prefix tuning (Li & Liang 2021): ``P`` trained key/value positions prepended to every self-attention layer.

Every query attends to the ``P`` prefix positions in addition to what the model's own mask lets it see; the real
tokens' keys and values are unchanged. The prefix is produced, as in the `adapters` library (so its checkpoints load
with identical outputs), by a reparametrisation MLP while training::

    E = wte.weight                                   # (P, hidden)
    KV = control_trans(E)                            # Linear(hidden, m) -> f -> Linear(m, N), N = L·2·H_kv·D
    KV.view(P, L, 2, H_kv, D)                        # layer-major, then key/value, then head, then dim

with ``L`` the layers that have a prefix (``leave_out`` excluded, numbered 0.. in order; encoder-decoder models:
then one more slot per decoder layer for its cross-attention, ``cross_prefix``), ``H_kv`` the key/value
heads (grouped-query attention: fewer than the query heads) and ``D`` the head dimension. Where the layer stacks
differ in attention shape (CLIPModel's text and vision towers), each slot's block is ``2·H_kv·D`` of its own layer's
stack, in slot order, and ``N`` is the sum of the blocks; ``hidden`` is the first stack's width. ``flat=True`` (or
``eject()``) keeps ``KV`` itself as one parameter ``control_trans`` of ``P·N`` numbers instead.

The prefix reaches the model through the attention function transformers calls (``adapterhub.runtime.attention_hooks``):
the point is ``("attention", "self")`` of each layer and a Stack step is ``running.with_prefix(keys, values)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    ATTENTION,
    AdapterModule,
    AttentionInputs,
    ModelDims,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.methods.bottleneck import make_activation
from adapterhub.spec.configs import ACTIVATIONS, OMIT_DEFAULT, MethodConfig, layer_list, register_config


def _positive_int(name: str, value: Any) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class PrefixTuningConfig(MethodConfig):
    """Prefix tuning: ``prefix_length`` key/value positions per self-attention layer, made by
    ``Embedding(P, hidden) -> Linear(hidden, bottleneck_size) -> non_linearity -> Linear(bottleneck_size, L·2·H_kv·D)``
    (or kept as one flat tensor with ``flat=True``). ``dropout`` applies to the generated keys/values; ``leave_out``
    lists layers without a prefix.

    Parameters: ``P·d + d·m + m + m·N + N`` (MLP) or ``P·N`` (flat), ``N = L·2·H_kv·D``."""

    method = "prefix_tuning"

    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    flat: bool = False
    leave_out: tuple[int, ...] = field(default_factory=tuple)
    # encoder-decoder models: prefixes on each decoder layer's cross-attention too (the `adapters` library's
    # ``cross_prefix``); left out of to_dict while true
    cross_prefix: bool = field(default=True, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        _positive_int("prefix_length", self.prefix_length)
        _positive_int("bottleneck_size", self.bottleneck_size)
        activation = self.non_linearity.lower() if isinstance(self.non_linearity, str) else None
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"non_linearity={self.non_linearity!r} is not valid; choose one of {', '.join(ACTIVATIONS)}."
            )
        object.__setattr__(self, "non_linearity", activation)
        dropout = self.dropout
        if not (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and 0.0 <= dropout < 1.0):
            raise ConfigError(f"dropout must be a number in [0, 1), got {dropout!r}.")
        object.__setattr__(self, "dropout", float(dropout))
        for name in ("flat", "cross_prefix"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        object.__setattr__(self, "leave_out", layer_list("leave_out", self.leave_out))


register_config(PrefixTuningConfig, {"prefix_tuning": lambda: PrefixTuningConfig()})


@register_method("prefix_tuning")
class PrefixTuningAdapter(AdapterModule):
    """One prefix-tuning adapter for the whole model. Parameters (names as in the `adapters` library):
    ``wte.weight`` ``(P, d)``, ``control_trans.{0,2}.{weight,bias}`` (MLP form) or ``control_trans`` ``(P·N,)``
    (flat form)."""

    config_cls = PrefixTuningConfig
    config: PrefixTuningConfig
    composable = frozenset({"Stack", "BatchSplit", "Parallel", "Average"})
    packed_refusal = (
        "its prefix keys and values are prepended to the attention of the whole row, so every sequence packed in "
        "the row would attend to them"
    )

    def __init__(self, name: str, config: PrefixTuningConfig, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        dims.check_leave_out(config.leave_out)
        # model layer -> index among the layers with a prefix
        self.slots = {
            layer: slot
            for slot, layer in enumerate(i for i in range(dims.num_layers) if i not in config.leave_out)
        }
        if not self.slots:
            raise ConfigError("leave_out lists every layer: the prefix would sit nowhere.")
        # encoder-decoder decoders: model layer -> slot of its cross-attention prefix, after every self slot
        with_cross = config.cross_prefix and "cross" in dims.decoder_points
        cross = [i for i in self.slots if with_cross and dims.has_point(i, "cross")]
        self.cross_slots = {layer: len(self.slots) + k for k, layer in enumerate(cross)}
        # slot -> (H_kv, D) of its layer's stack (CLIPModel's towers differ), and where its block starts in N
        self.shapes: dict[int, tuple[int, int]] = {}
        for layer, slot in (*self.slots.items(), *self.cross_slots.items()):
            stack = dims.stack_at(layer)
            if stack.num_kv_heads is None or stack.head_dim is None:
                raise ConfigError(
                    f"Prefix tuning needs the attention shape (key/value heads, head dim) of this "
                    f"{dims.model_type} model, which is unknown."
                )
            self.shapes[slot] = (stack.num_kv_heads, stack.head_dim)
        self.offsets: dict[int, int] = {}
        width = 0
        for slot in sorted(self.shapes):
            self.offsets[slot] = width
            width += 2 * self.shapes[slot][0] * self.shapes[slot][1]
        self.width = width  # N = Σ_slots 2·H_kv·D
        p = config.prefix_length
        self.dropout = nn.Dropout(config.dropout)
        self.wte: nn.Embedding | None
        self.control_trans: nn.Module | nn.Parameter
        if config.flat:
            self.wte = None
            self.control_trans = nn.Parameter(torch.randn(p * self.width))
        else:
            self.wte = nn.Embedding(p, dims.hidden_size)
            self.control_trans = nn.Sequential(
                nn.Linear(dims.hidden_size, config.bottleneck_size),
                make_activation(config.non_linearity),
                nn.Linear(config.bottleneck_size, self.width),
            )

    def points(self, layer: int) -> tuple[Point, ...]:
        if layer not in self.slots:
            return ()
        return (
            ((ATTENTION, "self"), (ATTENTION, "cross"))
            if layer in self.cross_slots
            else ((ATTENTION, "self"),)
        )

    def prefix(self, layer: int, point: str = "self") -> tuple[torch.Tensor, torch.Tensor]:
        """``(keys, values)`` of ``layer``'s self-attention (``point="self"``) or cross-attention (``"cross"``),
        each ``(1, H_kv, P, D)``."""
        slots = self.cross_slots if point == "cross" else self.slots
        slot = slots[layer]
        heads, head_dim = self.shapes[slot]
        start, block = self.offsets[slot], 2 * heads * head_dim
        p = self.config.prefix_length
        if isinstance(self.control_trans, nn.Parameter):
            kv = self.control_trans.view(p, -1)[:, start : start + block]  # (P, 2·H_kv·D)
        else:
            first: nn.Linear = self.control_trans[0]  # type: ignore[assignment,index]
            activation: nn.Module = self.control_trans[1]  # type: ignore[assignment,index]
            last: nn.Linear = self.control_trans[2]  # type: ignore[assignment,index]
            hidden = activation(first(self.wte.weight))  # type: ignore[union-attr]  # (P, m)
            rows = slice(start, start + block)  # only this layer's outputs of the last Linear
            kv = F.linear(hidden, last.weight[rows], last.bias[rows])  # (P, 2·H_kv·D)
        kv = self.dropout(kv.reshape(p, 2, heads, head_dim)).permute(1, 2, 0, 3)  # (2, H_kv, P, D)
        return kv[0].unsqueeze(0), kv[1].unsqueeze(0)

    def flat_prefix(self) -> torch.Tensor:
        """The whole prefix as the flat form stores it: ``(P·N,)``."""
        if isinstance(self.control_trans, nn.Parameter):
            return self.control_trans.detach().clone()
        with torch.no_grad():
            return self.control_trans(self.wte.weight).reshape(-1).clone()  # type: ignore[union-attr]

    def eject(self) -> None:
        """Replace the reparametrisation MLP by the prefix it produces (same outputs; ``P·N`` parameters, for
        inference and saving). The config becomes ``flat=True``."""
        if self.config.flat:
            return
        flat = self.flat_prefix()
        self.config = self.config.replace(flat=True)  # type: ignore[assignment]
        del self.control_trans
        self.wte = None
        self.control_trans = nn.Parameter(flat)

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> AttentionInputs:
        keys, values = self.prefix(layer, point[1])
        return running.with_prefix(keys, values)  # type: ignore[no-any-return]

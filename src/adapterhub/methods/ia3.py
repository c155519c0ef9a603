"""(IA)³ (Liu et al. 2022): learned vectors that rescale activations of linear projections.

For a projection ``y = W x + b`` (``W: (d_out, d_in)``), a target scales either its output or its input:

    output side:  y' = l ⊙ (W x + b)            l: (d_out,)     merge: W' = diag(l) W, b' = l ⊙ b
    input side:   y' = W (l ⊙ x) + b            l: (d_in,)      merge: W' = W diag(l)

Vectors start at one (a new adapter is the exact identity). The ``ia3`` preset follows the paper and peft: the
outputs of the keys and values (``targets=[k, v]``) and the input of the FFN's down projection
(``input_targets=[ffn_out]``, i.e. the activation between the FFN's two projections). The `adapters` library's
``IA3Config`` (LoRA with ``composition_mode="scale"``) scales *outputs* only: k, v and its ``intermediate_lora``
location (BERT: ``intermediate.dense``'s output, before the activation) = ``targets=[k, v, ffn_in]``,
``input_targets=[]``; its files load into that layout (``adapterhub.io.adapters_lib_ia3``).

Parameters: ``d_out`` per output target and ``d_in`` per input target, per layer.

Composition at a projection (``LinearInputs``): a Stack multiplies the scalings (the running output is scaled by an
output vector; an input vector multiplies the input scaling of the (IA)³ steps before it, which the Stack's running
value ``LinearRunning`` carries past any other method's step, so ``Stack(a, b)`` equals merging ``a`` then ``b``;
a Split, BatchSplit, Parallel or Average ending the Stack continues from those scalings). A LoRA or DoRA update in
the same Stack is added on the unscaled input.
Split, BatchSplit, Parallel and Average work on rows/positions. Fuse is refused (nothing to mix). Unmerging divides
by the vectors again (exact inverse up to float rounding; a vector entry of zero cannot be unmerged).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    LINEAR,
    AdapterModule,
    BaseWeights,
    LinearInputs,
    LinearRunning,
    ModelDims,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.spec.configs import LINEAR_POINTS, MethodConfig, layer_list, register_config

_KEY = re.compile(r"^layers\.(\d+)\.(out|in)_([a-z_]+)$")


def _points(name: str, value: Any) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) for p in items):
        raise ConfigError(
            f"{name} must be a list of projections ({', '.join(LINEAR_POINTS)}), got {value!r}."
        )
    for p in items:
        if p not in LINEAR_POINTS:
            raise ConfigError(f"{name}: {p!r} is not a projection; choose from {', '.join(LINEAR_POINTS)}.")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, kw_only=True)
class IA3Config(MethodConfig):
    """(IA)³: ``targets`` (projections whose output is scaled, default ``[k, v]``), ``input_targets`` (projections
    whose input is scaled, default ``[ffn_out]``: the FFN's intermediate activation), ``leave_out`` (layers
    without it). Parameters: ``d_out`` per target and ``d_in`` per input target, per layer."""

    method: ClassVar[str] = "ia3"

    targets: tuple[str, ...] = ("k", "v")
    input_targets: tuple[str, ...] = ("ffn_out",)
    leave_out: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", _points("targets", self.targets))
        object.__setattr__(self, "input_targets", _points("input_targets", self.input_targets))
        if not self.targets and not self.input_targets:
            raise ConfigError("(IA)³ needs at least one of targets / input_targets.")
        object.__setattr__(self, "leave_out", layer_list("leave_out", self.leave_out))


register_config(IA3Config, presets={"ia3": lambda: IA3Config()})


@register_method("ia3")
class IA3Adapter(AdapterModule):
    """``layers[str(i)]`` holds ``out_<point>`` ``(d_out,)`` and ``in_<point>`` ``(d_in,)`` vectors."""

    config_cls = IA3Config
    config: IA3Config
    composable: ClassVar[frozenset[str]] = frozenset({"Stack", "Split", "BatchSplit", "Parallel", "Average"})
    mergeable: ClassVar[bool] = True

    def __init__(self, name: str, config: IA3Config, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        dims.check_leave_out(config.leave_out)
        sizes = {f"out_{p}": dims.linear_shape(p)[1] for p in config.targets}
        sizes.update({f"in_{p}": dims.linear_shape(p)[0] for p in config.input_targets})
        names = tuple(dict.fromkeys((*config.targets, *config.input_targets)))
        self.layers = nn.ModuleDict(
            {
                str(i): nn.ParameterDict(
                    {
                        key: nn.Parameter(torch.ones(n))
                        for key, n in sizes.items()
                        if dims.has_point(i, key.split("_", 1)[1])  # cross_*: decoder layers only
                    }
                )
                for i in range(dims.num_layers)
                if i not in config.leave_out and dims.points_at(i, names)
            }
        )
        # layer -> its points (every target, except decoder-only ones in encoder layers)
        self._points = {
            int(i): tuple((LINEAR, p) for p in dims.points_at(int(i), names)) for i in self.layers
        }

    @classmethod
    def linear_shapes_from(cls, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, int, int], ...]:
        """Each vector gives one side's width (an ``out_`` vector ``d_out``, an ``in_`` vector ``d_in``); a side no
        vector uses is given as 0 (the module never reads it)."""
        d_in: dict[str, int] = {}
        d_out: dict[str, int] = {}
        for key, tensor in tensors.items():
            match = _KEY.match(key)
            if match and tensor.dim() == 1:
                (d_out if match.group(2) == "out" else d_in)[match.group(3)] = int(tensor.shape[0])
        return tuple((p, d_in.get(p, 0), d_out.get(p, 0)) for p in dict.fromkeys([*d_out, *d_in]))

    def points(self, layer: int) -> tuple[Point, ...]:
        return self._points.get(layer, ()) if str(layer) in self.layers else ()

    def kinds(self) -> frozenset[str]:
        return frozenset({LINEAR})

    def vectors(self, layer: int, point: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(input vector or None, output vector or None)`` at ``point`` of ``layer``."""
        params: nn.ParameterDict = self.layers[str(layer)]  # type: ignore[assignment]
        return params.get(f"in_{point}"), params.get(f"out_{point}")

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> LinearRunning:
        """Scale the base projection: an input vector ``l`` turns ``y`` into
        ``y + s_out ⊙ W((Π l_prev)(l - 1) ⊙ x)`` (``s_out``, ``Π l_prev``: the running scalings), or recomputes
        ``W (l ⊙ x) + b`` as peft does when ``y`` is still the projection's own output; an output vector multiplies
        ``y``. The running scalings are multiplied by this adapter's vectors."""
        assert isinstance(inputs, LinearInputs)
        scale_in, scale_out = self.vectors(layer, point[1])
        y, prev_in, prev_out = running.y, running.in_scale, running.out_scale
        if scale_in is not None and running.rotated is not None:
            raise ConfigError(
                f"(IA)³ adapter {self.adapter_name!r} scales the input of {point[1]!r} after {running.rotated!r} "
                "rotated it in the same Stack; a Stack carries one rotation of a projection's input and no scaling "
                "after it. Put the (IA)³ adapter before the OFT/BOFT one, or merge one of them first."
            )
        if scale_in is not None:
            weight, bias = inputs.require_weight("(IA)³ on a projection's input"), inputs.bias
            if inputs.holds_own_output(running):  # W x + b itself: the projection of the scaled input
                y = F.linear(inputs.x * scale_in, weight, bias)  # (batch, seq, d_out)
            else:
                factor = scale_in - 1 if prev_in is None else prev_in * (scale_in - 1)  # (d_in,)
                update = F.linear(inputs.x * factor, weight)  # (batch, seq, d_out)
                y = y + (update if prev_out is None else update * prev_out)
            prev_in = scale_in if prev_in is None else prev_in * scale_in
        if scale_out is not None:
            y = y * scale_out
            prev_out = scale_out if prev_out is None else prev_out * scale_out
        return LinearRunning(y, prev_in, prev_out, running.rotated)

    def merge_updates(
        self, base: BaseWeights, merge: bool
    ) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor | None]]:
        """Merge: ``W' = diag(l_out) W diag(l_in)``, ``b' = l_out ⊙ b``; unmerge divides by the vectors."""
        for key in self.layers:
            layer = int(key)
            for _, point in self._points[layer]:
                scale_in, scale_out = self.vectors(layer, point)
                weight, bias = base(layer, point)  # (d_out, d_in), (d_out,)
                factor = torch.ones_like(weight)
                if scale_in is not None:
                    factor = factor * (scale_in if merge else 1 / scale_in).to(weight.dtype).view(1, -1)
                if scale_out is not None:
                    factor = factor * (scale_out if merge else 1 / scale_out).to(weight.dtype).view(-1, 1)
                bias_delta = None
                if scale_out is not None and bias is not None:
                    out_factor = (scale_out if merge else 1 / scale_out).to(bias.dtype)
                    bias_delta = bias * out_factor - bias
                yield layer, point, weight * factor - weight, bias_delta

"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020; Bapna & Firat 2019).

``A(x) = W_up · f(W_down · x + b_down) + b_up`` with ``W_down: d -> m`` and ``W_up: m -> d``; the placement
around the model's residual connection and LayerNorm is described in ``BottleneckConfig``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from adapterhub.errors import ConfigError
from adapterhub.methods import bottleneck_grouped
from adapterhub.methods.base import (
    RESIDUAL,
    AdapterModule,
    ModelDims,
    Point,
    PointInputs,
    ResidualInputs,
    register_method,
)
from adapterhub.spec.configs import BottleneckConfig


def make_activation(name: str) -> nn.Module:
    table: dict[str, nn.Module] = {
        "relu": nn.ReLU(),
        "swish": nn.SiLU(),
        "silu": nn.SiLU(),
        "gelu": nn.GELU(),
        "gelu_new": nn.GELU(approximate="tanh"),
        "tanh": nn.Tanh(),
        "sigmoid": nn.Sigmoid(),
        "leakyrelu": nn.LeakyReLU(),
        "identity": nn.Identity(),
    }
    return table[name]


@dataclass
class BottleneckState:
    """Inside one site: ``x`` the adapter input, ``adapter_residual`` what its output is added to."""

    x: torch.Tensor
    adapter_residual: torch.Tensor


class BottleneckLayer(nn.Module):
    """The adapter at one site: ``y = r + scaling · up(f(down(norm_before(x))))`` (norm_after optional)."""

    def __init__(
        self,
        hidden_size: int,
        width: int,
        config: BottleneckConfig,
        linear: Callable[[int, int], nn.Module] = nn.Linear,
        *,
        initialise: bool = True,
    ) -> None:
        """``linear(d_in, d_out)`` builds the down and up projections (``nn.Linear``; Compacter: PHM layers).
        ``initialise=False`` (a layer built only to receive saved weights): ``nn.Linear`` projections built without
        their initialisers (``uninitialised_linear``) and no ``reset_parameters``: every parameter is saved."""
        super().__init__()
        if not initialise:
            if linear is not nn.Linear:
                raise ConfigError(
                    "BottleneckLayer builds uninitialised nn.Linear projections only; build other projections "
                    "with initialise=True."
                )
            linear = uninitialised_linear
        self.config = config
        self.norm_before = nn.LayerNorm(hidden_size) if config.ln_before else None
        self.down: nn.Linear = linear(hidden_size, width)  # type: ignore[assignment]  # (m, d)
        self.activation = make_activation(config.non_linearity)
        self.up: nn.Linear = linear(width, hidden_size)  # type: ignore[assignment]  # (d, m)
        self.dropout = nn.Dropout(config.dropout)
        self.norm_after = nn.LayerNorm(hidden_size) if config.ln_after else None
        self.scaling: nn.Parameter | float
        if config.scaling == "learned":
            self.scaling = nn.Parameter(torch.ones(1))
        elif config.scaling == "channel":
            self.scaling = nn.Parameter(torch.ones(hidden_size))
        else:
            self.scaling = float(config.scaling)
        if initialise:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Near-identity init: ``bert`` = N(0, 0.02) weights and zero biases; ``houlsby`` = N(0, 1e-2) truncated at
        two standard deviations, zero biases; ``mam_adapter`` = Kaiming-uniform down and an all-zero up projection
        (the adapter starts as the exact identity)."""
        scheme = self.config.init_weights
        with torch.no_grad():
            if scheme == "bert":
                for linear in (self.down, self.up):
                    linear.weight.normal_(0.0, 0.02)
                    linear.bias.zero_()
            elif scheme == "houlsby":
                for linear in (self.down, self.up):
                    nn.init.trunc_normal_(linear.weight, mean=0.0, std=1e-2, a=-2e-2, b=2e-2)
                    linear.bias.zero_()
            else:
                nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
                self.down.bias.zero_()
                self.up.weight.zero_()
                self.up.bias.zero_()

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """``scaling · A(x)`` without any residual. ``x``: (batch, seq, d) -> (batch, seq, d)."""
        if self.norm_before is not None:
            x = self.norm_before(x)
        up = self.up(self.activation(self.down(x)))
        return self.dropout(up * self.scaling)

    def forward(self, x: torch.Tensor, adapter_residual: torch.Tensor) -> torch.Tensor:
        out = self.delta(x)
        if self.norm_after is None:
            return out + adapter_residual
        if self.config.adapter_residual_before_ln:
            return self.norm_after(out + adapter_residual)
        return self.norm_after(out) + adapter_residual


def uninitialised_linear(d_in: int, d_out: int) -> nn.Linear:
    """``nn.Linear(d_in, d_out)`` with its weight ``(d_out, d_in)`` and bias ``(d_out,)`` left unset: the
    attributes ``nn.Linear.__init__`` sets, without its ``reset_parameters`` (``torch.nn.utils.skip_init`` runs
    that on the meta device, at twice the cost of a plain construction; this is a fifth of it).
    tests/methods/test_load_noinit.py checks it matches ``nn.Linear`` attribute for attribute."""
    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.in_features, linear.out_features = d_in, d_out
    linear.weight = nn.Parameter(torch.empty(d_out, d_in))  # (d_out, d_in)
    linear.bias = nn.Parameter(torch.empty(d_out))  # (d_out,)
    return linear


def plain_layer(layer: BottleneckLayer) -> bool:
    """Whether ``layer`` computes ``BottleneckLayer``'s own ``delta`` and ``forward`` (through its ``down`` /
    ``up``, which Compacter's PHM projections provide as ``weight`` / ``bias``) with no LayerNorm after: the
    grouped layouts compute exactly that."""
    kind = type(layer)
    return (
        kind.delta is BottleneckLayer.delta
        and kind.forward is BottleneckLayer.forward
        and layer.norm_after is None
    )


def group_key(module: BottleneckAdapter, layer: BottleneckLayer) -> tuple[Any, ...] | None:
    """What must be equal for adapters to run as one grouped computation at a point: their placement
    (``original_ln_before``, ``residual_before_ln``, ``original_ln_after``), the bottleneck width, the activation
    and the dropout; None when ``layer`` cannot be grouped at all (not ``plain_layer``, or a LayerNorm before the
    down projection). Equal keys imply :func:`can_group`."""
    if not plain_layer(layer) or layer.norm_before is not None:
        return None
    config, activation = module.config, layer.activation
    return (
        config.original_ln_before,
        config.residual_before_ln,
        config.original_ln_after,
        layer.down.out_features,
        type(activation),
        getattr(activation, "approximate", None),
        layer.dropout.p,
    )


def can_group(layers: Sequence[BottleneckLayer]) -> bool:
    """Whether these adapters can run as one batched computation: no LayerNorm before the down projection, the
    same bottleneck width, activation and dropout."""
    first = layers[0]
    return all(
        layer.norm_before is None
        and layer.down.out_features == first.down.out_features
        and type(layer.activation) is type(first.activation)
        and getattr(layer.activation, "approximate", None) == getattr(first.activation, "approximate", None)
        and layer.dropout.p == first.dropout.p
        for layer in layers
    )


def stacked_scaling(layers: Sequence[BottleneckLayer], like: torch.Tensor) -> torch.Tensor | None:
    """The adapters' scalings stacked for broadcasting against ``(K, rows, d)``: ``(K, 1, d)`` when any is a
    learned tensor, ``(K, 1, 1)`` for plain numbers, ``None`` when all are 1."""
    scales = [layer.scaling for layer in layers]
    d = like.shape[-1]
    if any(isinstance(s, torch.Tensor) for s in scales):
        as_rows = [torch.as_tensor(s, dtype=like.dtype, device=like.device).expand(d) for s in scales]
        return torch.stack(as_rows).unsqueeze(1)  # (K, 1, d)
    if all(float(s) == 1.0 for s in scales):  # type: ignore[arg-type]
        return None
    return torch.tensor(scales, dtype=like.dtype, device=like.device).view(len(scales), 1, 1)


def stacked_deltas(layers: Sequence[BottleneckLayer], x: torch.Tensor) -> torch.Tensor:
    """``u_n = s_n · A_n(x)`` of N adapters on the same input, ``(B, T, d) -> (N, B, T, d)``.

    Adapters of equal shape and activation (the usual case) run together: one matmul for all down projections
    (``W_down`` concatenated to ``(N·m, d)``) and one batched matmul for the up projections (``(N, m, d)``).
    """
    first = layers[0]
    n, d = len(layers), x.shape[-1]
    width = first.down.out_features
    if not can_group(layers):
        return torch.stack([layer.delta(x) for layer in layers])
    lead = x.shape[:-1]
    w_down = torch.cat([layer.down.weight for layer in layers])  # (N·m, d)
    b_down = torch.cat([layer.down.bias for layer in layers])  # (N·m,)
    z = first.activation(F.linear(x.reshape(-1, d), w_down, b_down))  # (B·T, N·m)
    z = z.view(-1, n, width).transpose(0, 1)  # (N, B·T, m)
    w_up = torch.stack([layer.up.weight for layer in layers]).transpose(1, 2)  # (N, m, d)
    b_up = torch.stack([layer.up.bias for layer in layers]).unsqueeze(1)  # (N, 1, d)
    up = torch.baddbmm(b_up, z, w_up)  # (N, B·T, d)
    scales = stacked_scaling(layers, up)
    if scales is not None:
        up = up * scales
    return first.dropout(up).view(n, *lead, d)


def enter_site(config: BottleneckConfig, inputs: ResidualInputs) -> BottleneckState:
    """Adapter input and residual at a site, per the config's ``original_ln_before`` / ``residual_before_ln``."""
    h = inputs.h
    adapter_residual = h
    x = h
    if config.original_ln_before:
        if config.residual_before_ln == "post_add":
            adapter_residual = h + inputs.residual  # (batch, seq, d)
        x = inputs.original_output()
    if config.residual_before_ln is False:
        adapter_residual = x
    return BottleneckState(x=x, adapter_residual=adapter_residual)


def leave_site(
    config: BottleneckConfig, y: torch.Tensor, inputs: ResidualInputs, pre_norm: bool
) -> torch.Tensor:
    """Turn the adapters' output ``y`` into the value that replaces the hooked output.

    Post-norm models: the LayerNorm's output, ``LN(y + input)`` or ``y``. Pre-norm models: the sub-layer output
    that the layer then adds to the residual stream, so ``y`` (the stream becomes ``y + input``) or ``y - input``
    (``original_ln_after=False``: the stream becomes ``y``).
    """
    if pre_norm:
        return y if config.original_ln_after else y - inputs.residual
    if not config.original_ln_after:
        return y
    summed = y + inputs.residual
    return inputs.norm(summed) if inputs.norm is not None else summed


@register_method("bottleneck")
class BottleneckAdapter(AdapterModule):
    """A bottleneck adapter over all layers: ``layers[str(i)][site]`` is a ``BottleneckLayer``."""

    config_cls = BottleneckConfig
    config: BottleneckConfig
    sequential: ClassVar[bool] = True  # False for adapters beside the sub-layer (methods/parallel_adapter.py)
    # built for a load with its layers' projections unset (every parameter is saved; the scaling constant and
    # activation come from the config)
    init_on_load: ClassVar[bool] = False

    def __init__(
        self, name: str, config: BottleneckConfig, dims: ModelDims, *, initialise: bool = True
    ) -> None:
        """``initialise=False``: the layers' parameters are left unset for a load to set (``BottleneckLayer``)."""
        super().__init__(name, config, dims)
        # the keyword goes to make_layer only when False: subclasses' make_layer (Compacter, gated) do not take it
        # and are only ever built initialised (their init_on_load is True)
        fresh: dict[str, Any] = {} if initialise else {"initialise": False}
        dims.check_leave_out(config.leave_out)
        unknown = [site for site in config.sites if dims.residual_points and site not in dims.residual_points]
        if unknown:
            raise ConfigError(
                f"The config places adapters at site(s) {unknown}, but this {dims.model_type} architecture has only "
                f"{list(dims.residual_points)}; set sites to a subset of those."
            )
        # each layer at its own stack's width (CLIPModel's towers differ)
        widths = {i: config.bottleneck_width(dims.hidden_size_at(i), i) for i in range(dims.num_layers)}
        self.layers = nn.ModuleDict(
            {
                str(i): nn.ModuleDict(
                    {
                        site: self.make_layer(dims.hidden_size_at(i), widths[i], config, **fresh)
                        for site in dims.points_at(i, config.sites)  # cross_attn: decoder layers only
                    }
                )
                for i in range(dims.num_layers)
                if i not in config.leave_out and dims.points_at(i, config.sites)
            }
        )

    def make_layer(
        self, hidden_size: int, width: int, config: BottleneckConfig, *, initialise: bool = True
    ) -> BottleneckLayer:
        """The adapter at one site (subclasses build other layers, e.g. Compacter's PHM projections)."""
        return BottleneckLayer(hidden_size, width, config, initialise=initialise)

    def points(self, layer: int) -> tuple[Point, ...]:
        key = str(layer)
        if key not in self.layers:
            return ()
        sites: nn.ModuleDict = self.layers[key]  # type: ignore[assignment]
        return tuple((RESIDUAL, site) for site in sites)

    def kinds(self) -> frozenset[str]:
        """Residual points, where any layer has a site (subclasses with other points add their kinds); without
        walking every layer's points: the store asks it for each adapter of every new setup."""
        return frozenset({RESIDUAL}) if len(self._modules["layers"]) else frozenset()  # type: ignore[arg-type]

    def present(self, layer: int, kind: str, point: str) -> bool:
        """``(kind, point) in self.points(layer)``, a residual point read from the ``nn.ModuleDict`` entries
        directly (the interpreter asks it for every adapter at every point of a step)."""
        if kind != RESIDUAL:
            return super().present(layer, kind, point)  # subclasses' other points (invertible: embeddings)
        sites: Any = self._modules["layers"]._modules.get(str(layer))  # type: ignore[union-attr]
        return sites is not None and point in sites._modules

    def layer_at(self, layer: int, site: str) -> BottleneckLayer:
        sites: nn.ModuleDict = self.layers[str(layer)]  # type: ignore[assignment]
        return sites[site]  # type: ignore[return-value]

    # ---- composition protocol (residual points only)
    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> torch.Tensor:
        """Stack step: the adapter input is prepared from the running value by this config (e.g.
        ``LN(c + input)``) and the adapter adds to it."""
        state = enter_site(self.config, inputs.on(running))  # type: ignore[arg-type]
        return self.layer_at(layer, point[1])(state.x, state.adapter_residual)

    def stack_leave(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> torch.Tensor:
        return leave_site(self.config, running, inputs, self.dims.pre_norm)  # type: ignore[arg-type]

    def fuse_enter(self, layer: int, point: Point, inputs: PointInputs) -> tuple[torch.Tensor, torch.Tensor]:
        state = enter_site(self.config, inputs)  # type: ignore[arg-type]
        return state.x, state.adapter_residual

    def fuse_placement(self) -> Any:
        config = self.config
        return {
            "original_ln_before": config.original_ln_before,
            "residual_before_ln": config.residual_before_ln,
            "original_ln_after": config.original_ln_after,
        }

    def fuse_deltas(
        self, modules: Sequence[AdapterModule], layer: int, point: Point, x: torch.Tensor
    ) -> torch.Tensor:
        others = [m for m in modules if not isinstance(m, BottleneckAdapter)]
        if others:
            raise ConfigError(
                f"Fuse combines bottleneck adapters; {others[0].adapter_name!r} is a {others[0].method} adapter."
            )
        return stacked_deltas([m.layer_at(layer, point[1]) for m in modules], x)  # type: ignore[attr-defined,operator]

    def grouped_stacks(
        self, modules: Sequence[AdapterModule], layer: int, point: Point
    ) -> bottleneck_grouped.Stacks | None:
        """The weights of ``modules`` (this one first) at ``point`` stacked for one grouped computation
        (``bottleneck_grouped.stacks``), or None (run them one by one) unless all are of this very class (subclasses
        such as gated adapters compute otherwise), sequential, and their layers have one ``group_key``."""
        if not all(type(m) is type(self) and m.sequential for m in modules):
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
        """Row block ``k`` (``sizes[k]`` rows) through adapter ``k`` as one computation: enter the site once, the
        K adapters' deltas as batched matmuls over their rows (``bottleneck_grouped.batch_split_deltas``, the
        weights from ``bottleneck_grouped.stacks``: kept slot stacks under a forward pass's plan), leave once.
        None (the blocks one by one) unless the adapters are all of this very class, sequential, and their layers
        have one ``group_key``."""
        st = self.grouped_stacks(modules, layer, point)
        if st is None:
            return None
        state = enter_site(self.config, inputs)  # type: ignore[arg-type]
        y = state.adapter_residual + bottleneck_grouped.batch_split_deltas(st, state.x, sizes)  # (B, T, d)
        return leave_site(self.config, y, inputs, self.dims.pre_norm)  # type: ignore[arg-type]

    def split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        bounds: Sequence[tuple[int, int]],
    ) -> torch.Tensor | None:
        """Token slices ``bounds[k]`` through adapter ``k`` (a packed row's segments) as one computation: enter the
        site once over the whole row, ``y = r + δ`` with the K adapters' deltas ``δ`` as batched matmuls over their
        slices (``bottleneck_grouped.split_deltas``), leave once; positions in no slice keep the point's base
        value (``inputs.base()``, what the interpreter gives a ``None`` slice). Each slice's value equals the slice
        run alone through its adapter. None (the slices one by one) unless the adapters are all of this very class,
        sequential, and their layers have one ``group_key``."""
        if not isinstance(inputs, ResidualInputs) or inputs.h.dim() != 3:
            return None
        st = self.grouped_stacks(modules, layer, point)
        if st is None:
            return None
        state = enter_site(self.config, inputs)  # x, r: (B, T, d)
        y = state.adapter_residual + bottleneck_grouped.split_deltas(st, state.x, bounds)  # (B, T, d)
        out = leave_site(self.config, y, inputs, self.dims.pre_norm)
        return bottleneck_grouped.keep_base(out, inputs, bounds)

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

Targeted by name instead (peft's ``IA3Config``): ``target_modules`` selects ``nn.Linear`` / ``Conv1D`` modules with
LoRA's rules (``exclude_modules``, ``layers_to_transform``, ``layers_pattern``); those that ``feedforward_modules``
also matches (peft's rule: a regex over the whole path, or a list entry the path ends with) get an input vector,
the others an output vector. A selected module that is a spec point sits at that point (it composes as one);
the others are points ``("module", path)`` (vectors ``by_name["out_"/"in_" + path with ":"]``).

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
    MODULE,
    MODULE_LAYER,
    AdapterModule,
    BaseWeights,
    LinearInputs,
    LinearRunning,
    ModelDims,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.spec.configs import LINEAR_POINTS, OMIT_DEFAULT, MethodConfig, layer_list, register_config
from adapterhub.spec.module_names import ALL_LINEAR, module_names

_KEY = re.compile(r"^layers\.(\d+)\.(out|in)_([a-z_]+)$")
_BY_NAME = re.compile(r"^by_name\.(out|in)_([^.]+)$")


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
    without it). Parameters: ``d_out`` per target and ``d_in`` per input target, per layer.

    Or by module name (peft's ``IA3Config``): ``target_modules`` (list of names / regex / ``"all-linear"``),
    ``feedforward_modules`` (those of them scaled on the input), ``exclude_modules``, ``layers_to_transform``,
    ``layers_pattern``; ``targets`` / ``input_targets`` / ``leave_out`` stay empty then."""

    method: ClassVar[str] = "ia3"

    targets: tuple[str, ...] = None  # type: ignore[assignment]  # None: ("k", "v"); () with target_modules
    input_targets: tuple[str, ...] = None  # type: ignore[assignment]  # None: ("ffn_out",); () by name
    leave_out: tuple[int, ...] = field(default_factory=tuple)
    target_modules: str | tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    feedforward_modules: str | tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    exclude_modules: str | tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    layers_to_transform: tuple[int, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    layers_pattern: tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        object.__setattr__(self, "leave_out", layer_list("leave_out", self.leave_out))
        object.__setattr__(self, "target_modules", module_names("target_modules", self.target_modules))
        if self.target_modules is not None:
            self._check_by_name()
            return
        for option in ("feedforward_modules", "exclude_modules", "layers_to_transform", "layers_pattern"):
            if getattr(self, option) is not None:
                raise ConfigError(
                    f"{option} selects modules by name: it needs target_modules (or use targets)."
                )
        targets = ("k", "v") if self.targets is None else self.targets
        inputs = ("ffn_out",) if self.input_targets is None else self.input_targets
        object.__setattr__(self, "targets", _points("targets", targets))
        object.__setattr__(self, "input_targets", _points("input_targets", inputs))
        if not self.targets and not self.input_targets:
            raise ConfigError("(IA)³ needs at least one of targets / input_targets.")

    def _check_by_name(self) -> None:
        if self.targets or self.input_targets or self.leave_out:
            raise ConfigError(
                f"target_modules={self.target_modules!r} chooses where (IA)³ sits by name; targets / input_targets "
                "/ leave_out choose spec points. Use one or the other (feedforward_modules for input scaling, "
                "layers_to_transform for layers)."
            )
        object.__setattr__(self, "targets", ())
        object.__setattr__(self, "input_targets", ())
        ff = module_names("feedforward_modules", self.feedforward_modules)
        if ff == ALL_LINEAR:
            raise ConfigError("feedforward_modules='all-linear' is not a module selection; name the modules.")
        object.__setattr__(self, "feedforward_modules", ff)
        if (
            isinstance(ff, tuple)
            and isinstance(self.target_modules, tuple)
            and not set(ff) <= set(self.target_modules)
        ):
            raise ConfigError(
                f"feedforward_modules {list(ff)} must be a subset of target_modules {list(self.target_modules)} "
                "(as in peft): list each feed-forward module in target_modules too."
            )
        excluded = module_names("exclude_modules", self.exclude_modules)
        object.__setattr__(self, "exclude_modules", excluded)
        layers = self.layers_to_transform
        if layers is not None:
            if isinstance(self.target_modules, str):
                raise ConfigError(
                    "layers_to_transform cannot be used when target_modules is a regex string (as in peft); put the "
                    "layer indices into the regex, or pass target_modules as a list."
                )
            listed = [layers] if isinstance(layers, int) else layers
            object.__setattr__(self, "layers_to_transform", layer_list("layers_to_transform", listed))
        pattern = self.layers_pattern
        if pattern is not None:
            if self.layers_to_transform is None:
                raise ConfigError(
                    "layers_pattern names the layer list for layers_to_transform: set that too."
                )
            object.__setattr__(
                self, "layers_pattern", (pattern,) if isinstance(pattern, str) else tuple(pattern)
            )

    @property
    def by_name(self) -> bool:
        """Whether the adapter targets modules by name (``target_modules``) rather than spec points."""
        return self.target_modules is not None


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
        self.by_name = nn.ParameterDict()
        self.layers: nn.ModuleDict
        self._paths: dict[tuple[int, str], str] = {}  # (layer, point) of a by-name target -> its module path
        if config.by_name:
            self._init_by_name(config, dims)
            self._points: dict[int, tuple[Point, ...]] = {
                int(i): tuple((LINEAR, p) for p in dict.fromkeys(k.split("_", 1)[1] for k in vectors))  # type: ignore[union-attr]
                for i, vectors in self.layers.items()
            }
            if len(self.by_name):
                self._points[MODULE_LAYER] = tuple(
                    (MODULE, path) for (layer, _), path in self._paths.items() if layer == MODULE_LAYER
                )
            return
        dims.check_leave_out(config.leave_out)
        names = tuple(dict.fromkeys((*config.targets, *config.input_targets)))
        for point in names:
            dims.linear_shape(point)  # raises for unknown points

        def sizes_at(i: int) -> dict[str, int]:
            """The vectors of layer ``i`` at its own stack's widths (CLIPModel's towers differ)."""
            sizes = {f"out_{p}": dims.linear_shape(p, i)[1] for p in config.targets if dims.has_point(i, p)}
            sizes.update(
                {f"in_{p}": dims.linear_shape(p, i)[0] for p in config.input_targets if dims.has_point(i, p)}
            )
            return sizes  # cross_*: decoder layers only

        self.layers = nn.ModuleDict(
            {
                str(i): nn.ParameterDict({key: nn.Parameter(torch.ones(n)) for key, n in sizes_at(i).items()})
                for i in range(dims.num_layers)
                if i not in config.leave_out and dims.points_at(i, names)
            }
        )
        # layer -> its points (every target, except decoder-only ones in encoder layers)
        self._points = {
            int(i): tuple((LINEAR, p) for p in dims.points_at(int(i), names)) for i in self.layers
        }

    def _init_by_name(self, config: IA3Config, dims: ModelDims) -> None:
        """One vector per selected module (input side for ``feedforward_modules``): spec points in ``layers``,
        the others in ``by_name``."""
        from adapterhub.methods.targeting import feedforward, selected

        spec: dict[int, dict[str, nn.Parameter]] = {}
        for module in selected(config, dims):
            if not module.linear:
                raise ConfigError(
                    f"target_modules selects {module.path!r}, a {module.type_name}; (IA)³ by name scales nn.Linear "
                    "and Conv1D modules. Name the layers inside it (or add it to exclude_modules)."
                )
            side = "in" if feedforward(config.feedforward_modules, module.path) else "out"
            vector = nn.Parameter(torch.ones(module.d_in if side == "in" else module.d_out))
            key = module.path.replace(".", ":")
            if module.point is not None and module.layer is not None:
                spec.setdefault(module.layer, {})[f"{side}_{module.point}"] = vector
                self._paths[(module.layer, module.point)] = module.path
            else:
                self.by_name[f"{side}_{key}"] = vector
                self._paths[(MODULE_LAYER, key)] = module.path
        self.layers = nn.ModuleDict({str(i): nn.ParameterDict(spec[i]) for i in sorted(spec)})

    def module_paths(self) -> dict[tuple[int, str], str]:
        """``(layer, point) -> module path`` of every target chosen by ``target_modules``."""
        return dict(self._paths)

    def adopt_tensors(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """By-name vectors (``by_name.<side>_<path with ":">``, as peft files read) of modules that are spec points
        here moved to ``layers.<i>.<side>_<point>``."""
        own = {path: key for key, path in self._paths.items()}
        out: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            match = _BY_NAME.match(name)
            found = own.get(match.group(2).replace(":", ".")) if match else None
            if match is None or found is None or found[0] == MODULE_LAYER:
                out[name] = tensor
            else:
                out[f"layers.{found[0]}.{match.group(1)}_{found[1]}"] = tensor
        return out

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
        return self._points.get(layer, ())

    def kinds(self) -> frozenset[str]:
        return frozenset(
            ({LINEAR} if len(self.layers) else set()) | ({MODULE} if len(self.by_name) else set())
        )

    def present(self, layer: int, kind: str, point: str) -> bool:
        if kind == MODULE:
            return (MODULE, point) in self._points.get(MODULE_LAYER, ())
        return super().present(layer, kind, point)

    def vectors(self, layer: int, point: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(input vector or None, output vector or None)`` at ``point`` of ``layer`` (``MODULE_LAYER``: a
        module path)."""
        if layer == MODULE_LAYER:
            key = point.replace(".", ":")
            return self.by_name.get(f"in_{key}"), self.by_name.get(f"out_{key}")
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
        for layer, points in self._points.items():
            for _, point in points:
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

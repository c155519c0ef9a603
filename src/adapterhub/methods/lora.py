"""LoRA (Hu et al. 2021): a low-rank update of linear projections.

For a projection ``y = W x + b`` with ``W: (d_out, d_in)``, LoRA adds ``ΔW = s · B A`` with ``A: (r, d_in)`` and
``B: (d_out, r)``::

    y' = W x + b + s · B (A dropout(x))          s = alpha / r   (use_rslora: alpha / sqrt(r))

``A`` starts Kaiming-uniform (``a = sqrt(5)``, as ``nn.Linear``) or, with ``init="gaussian"``, normal with std
``1 / r``; ``B`` starts at zero, so a new adapter is the exact identity (other ``init`` values, some of which
replace the base weight by a residual: ``lora_init`` and ``init_from_base``). Parameters: ``r · (d_in + d_out)`` per
target and layer. Because the update is a change of weights, ``merge_adapter`` folds ``s · B A`` into ``W``.

Targeted by name (``target_modules``), an ``nn.Embedding`` gets peft's embedding LoRA (``A`` looked up by the token
ids) and an ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` peft's convolution LoRA (``ConvLoRALayer``).

Composition at a projection (``LinearInputs``: input ``x``, output ``y``): a Stack adds each adapter's update to
the running output (``y + Δ_a x + Δ_b x``); Split, BatchSplit, Parallel and Average work on rows/positions of ``x``
and ``y``; a BatchSplit of LoRA adapters of equal rank and dropout, and a Split of LoRA adapters of equal dropout
(a packed row's segments), run as one grouped computation (``lora_grouped``: each row block or token slice through
its own ``A`` and ``B``). Fuse does not apply (LoRA has no output vector of its own to mix).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods import lora_grouped
from adapterhub.methods.base import (
    LINEAR,
    MODULE,
    MODULE_LAYER,
    AdapterModule,
    BaseWeights,
    LinearRunning,
    ModelDims,
    Point,
    PointInputs,
    register_method,
)
from adapterhub.methods.lora_init import base_factors, draw_like_peft, require_float_weight
from adapterhub.methods.lora_layers import ConvLoRALayer, LoRALayer
from adapterhub.methods.lora_mha import OUT_PROJ, attention_layers
from adapterhub.spec.configs import LoRAConfig
from adapterhub.spec.configs.low_rank import DATA_INITS

_KEY = re.compile(r"^layers\.(\d+)\.([a-z_]+)\.lora_([AB])$")
_BY_NAME_KEY = re.compile(r"^by_name\.([^.]+)\.([^.]+)$")
_SAVED_KEY = re.compile(r"^saved\.([^.]+)\.(.+)$")
_BIAS_KEY = re.compile(r"^(?:biases|tokens)\.([^.]+)$")


def module_key(path: str) -> str:
    """The key of a module target in ``LoRAAdapter.by_name`` (a module path with ``:`` for ``.``, which
    ``nn.ModuleDict`` keys cannot hold): ``bert.pooler.dense`` -> ``bert:pooler:dense``."""
    return path.replace(".", ":")


@register_method("lora")
class LoRAAdapter(AdapterModule):
    """LoRA over all layers: ``layers[str(i)][point]`` is a ``LoRALayer`` for each target projection; with
    ``target_modules``, modules that are spec points sit there too, the others in ``by_name[module_key(path)]``
    (points ``("module", path)`` of layer ``MODULE_LAYER``)."""

    config_cls = LoRAConfig
    config: LoRAConfig
    composable: ClassVar[frozenset[str]] = frozenset({"Stack", "Split", "BatchSplit", "Parallel", "Average"})
    mergeable: ClassVar[bool] = True
    layer_class: ClassVar[type[LoRALayer]] = LoRALayer
    # an nn.Conv1d / Conv2d / Conv3d target by name: built as (module, config, r, alpha)
    conv_layer_class: ClassVar[type[ConvLoRALayer]] = ConvLoRALayer
    # the kernel dimensions of the convolution targets whose input channels and kernel the files record
    # (``conv_modules``): Conv2d (LoHa's flattened kernel does not say them); LoHa / LoKr add Conv1d
    declared_conv_dims: ClassVar[tuple[int, ...]] = (2,)

    # built for a load (``build_for_load``) without drawing its factors: every parameter is in its state dict;
    # a base-modifying init (PiSSA / OLoRA / LoftQ) still computes its factors (``init_from_base`` reads them)
    init_on_load: ClassVar[bool] = False

    def __init__(self, name: str, config: LoRAConfig, dims: ModelDims, *, initialise: bool = True) -> None:
        """``initialise=False``: the layers' factors are left unset for a load to set (``LoRALayer``)."""
        super().__init__(name, config, dims)
        # the layer constructors get the keyword only when it is False: subclasses' layer classes that do not
        # take it (VeRA, LyCORIS, OFT, AdaLoRA) are only ever built initialised (their init_on_load is True)
        fresh: dict[str, Any] = (
            {} if initialise or getattr(config, "modifies_base", False) else {"initialise": False}
        )
        # a data init (init="eva" / "corda" / "lora_ga"): True until its data pass ran (model.initialize_<init>) or
        # weights were loaded (adopt_tensors)
        self.awaiting_data = getattr(config, "init", None) in DATA_INITS
        self.by_name = nn.ModuleDict()
        self._paths: dict[tuple[int, str], str] = {}  # (layer, point) of a module target -> its path
        # a convolution target of declared_conv_dims -> (c_in, kernel) (LoRA's other ones are not recorded: its
        # factors say their channels and kernel)
        self._convs: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._attention: dict[
            str, str
        ] = {}  # nn.MultiheadAttention target -> the path of its out_proj target
        if config.by_name:
            self._init_by_name(config, dims, fresh)
        else:
            dims.check_leave_out(config.leave_out)
            for point in config.targets:
                dims.linear_shape(point)  # raises for unknown points
            self.layers = nn.ModuleDict(
                {
                    str(i): nn.ModuleDict(  # each at its own stack's widths (CLIPModel's towers differ)
                        {
                            p: self.layer_class(*dims.linear_shape(p, i), config, **fresh)
                            for p in dims.points_at(i, config.targets)
                        }
                    )
                    for i in range(dims.num_layers)
                    # cross_*: decoder layers only
                    if i not in config.leave_out and dims.points_at(i, config.targets)
                }
            )
        # layer -> its points (every target, except decoder-only ones in encoder layers)
        self._points: dict[int, tuple[Point, ...]] = {
            int(i): tuple((LINEAR, p) for p in sites)  # type: ignore[attr-defined]
            for i, sites in self.layers.items()
        }
        if len(self.by_name):
            self._points[MODULE_LAYER] = tuple((MODULE, self._paths[(MODULE_LAYER, k)]) for k in self.by_name)
        # modules_to_save: full copies, made from the model's modules by ``set_saved`` before the adapter is used
        from adapterhub.methods.targeting import select_biases, select_saved, select_tokens

        self.saved = nn.ModuleDict()
        self._saved_paths = select_saved(config, dims, tuple(self._paths.values()))
        # option bias: copies of the model's biases, handed in by ``set_bias`` before the adapter is used
        self.biases = nn.ParameterDict()
        targets = self._target_paths(dims) if getattr(config, "bias", "none") == "lora_only" else ()
        self._bias_paths = select_biases(config, dims, targets, self._saved_paths)
        # trainable_token_indices: copies of embedding rows, handed in by ``set_tokens``
        self.tokens = nn.ParameterDict()
        self._token_rows, self._token_ties = select_tokens(
            config, dims, tuple(self._paths.values()), self._saved_paths
        )

    def modifies_base(self) -> bool:
        # LoHa, LoKr, VeRA, OFT and BOFT reuse this module with configs that have no base-modifying init
        return bool(getattr(self.config, "modifies_base", False))

    def init_from_base(self, base: BaseWeights) -> None:
        """PiSSA / OLoRA / LoftQ: ``A``, ``B`` (and what leaves the base) from each target's weight, in target
        order, drawing from the global generator as peft does (``lora_init``). The data inits (EVA, CorDA,
        LoRA-GA): nothing (the adapter waits for its data pass, ``DATA_INITS``; EVA's ``A`` stays Kaiming-uniform
        and ``B`` zero, as peft's; the others' initial factors stay zero, so the base is unchanged until the pass).
        Other inits: nothing."""
        if getattr(self.config, "init", None) in DATA_INITS or not self.modifies_base():
            return
        config = self.config
        with torch.no_grad():
            for index, point, lora in self.lora_targets():
                weight, _ = base(index, point)  # (d_out, d_in)
                require_float_weight(weight, config.init, repr(point))
                d_out, d_in = weight.shape
                draw_like_peft(d_in, d_out, lora.lora_A.shape[0])
                r = lora.lora_A.shape[0]
                a, b, new = base_factors(
                    weight, config.init, r, lora.scaling, config.loftq_bits, config.loftq_iter
                )
                lora.lora_A.copy_(a)
                lora.lora_B.copy_(b)
                if config.init == "loftq":
                    lora.base_offset = weight.float() - new  # (d_out, d_in)
                else:
                    lora.initial_A.copy_(a)
                    lora.initial_B.copy_(b)

    def base_updates(self, restore: bool) -> Iterator[tuple[int, str, torch.Tensor]]:
        """``(layer, point, ΔW (d_out, d_in))`` to add to the base: ``-removed`` when the adapter joins,
        ``+removed`` when it leaves (``removed``: ``LoRALayer.removed_from_base``)."""
        if not self.modifies_base():
            return
        sign = 1.0 if restore else -1.0
        for index, point, lora in self.lora_targets():
            yield index, point, sign * lora.removed_from_base()

    def _target_paths(self, dims: ModelDims) -> tuple[str, ...]:
        """The module path of every target (spec points: the whole projection's module)."""
        if self._paths:
            return tuple(self._paths.values())
        at = {(m.layer, m.point): m.path for m in dims.modules if m.point is not None}
        paths = []
        for layer, point, _ in self.lora_targets():
            if (layer, point) not in at:
                raise ConfigError(
                    f"bias='lora_only' keeps the bias of each target module, but target {point!r} of layer {layer} "
                    "is a slice of a fused projection (its module's bias belongs to other targets too); name the "
                    "modules with target_modules instead of targets."
                )
            paths.append(at[(layer, point)])
        return tuple(paths)

    def bias_paths(self) -> tuple[str, ...]:
        """The modules whose bias the adapter keeps a copy of (option ``bias``)."""
        return self._bias_paths

    def set_bias(self, path: str, bias: torch.Tensor) -> None:
        """Hold a trainable copy of ``bias`` (the model's bias of the module at ``path``, ``(d,)``)."""
        self.biases[module_key(path)] = nn.Parameter(bias.detach().clone())

    def token_embeddings(self) -> dict[str, tuple[int, ...]]:
        """``{embedding path: token ids}`` whose rows the adapter keeps a copy of (``trainable_token_indices``)."""
        return dict(self._token_rows)

    def token_paths(self) -> tuple[str, ...]:
        """The modules whose rows the copies replace while the adapter is active: the embeddings, then output heads
        tied to them."""
        return (*self._token_rows, *self._token_ties)

    def set_tokens(self, path: str, rows: torch.Tensor) -> None:
        """Hold a trainable copy of ``rows`` (the embedding's rows at its token ids, ``(n, d)``)."""
        self.tokens[module_key(path)] = nn.Parameter(rows.detach().clone())

    def token_delta(self, path: str) -> tuple[tuple[int, ...], torch.Tensor]:
        """``(token ids, rows (n, d))`` that replace the module's rows at ``path`` (a tied head: its embedding's)."""
        path = self._token_ties.get(path, path)
        return self._token_rows[path], self.tokens[module_key(path)]

    def held_bias(self, path: str) -> torch.Tensor:
        """The bias that replaces the module's own at ``path`` while this adapter is active: ``(d,)``."""
        return self.biases[module_key(path)]

    def saved_paths(self) -> tuple[str, ...]:
        """The paths of the modules ``modules_to_save`` selected (the adapter holds a copy of each)."""
        return self._saved_paths

    def set_saved(self, path: str, copy: nn.Module) -> None:
        """Hold ``copy`` (a trainable copy of the model's module at ``path``) as that module's replacement."""
        self.saved[module_key(path)] = copy

    def saved_module(self, path: str) -> nn.Module:
        """The copy of the module at ``path`` that runs in its place while this adapter is active."""
        return self.saved[module_key(path)]

    def _init_by_name(self, config: LoRAConfig, dims: ModelDims, fresh: dict[str, Any]) -> None:
        """The modules ``target_modules`` selects: spec points (the fast path) in ``layers``, the rest by name
        (``fresh``: the layers' ``initialise`` keyword, as ``__init__`` sets it)."""
        from adapterhub.methods.targeting import select_modules

        spec: dict[int, dict[str, LoRALayer]] = {}
        for target in select_modules(config, dims):
            module = target.module
            if module.attention:  # in_proj (E -> 3E) here, out_proj (E -> E) as a target of its own
                lora = attention_layers(module, config, target.r, target.alpha, **fresh)
                out = f"{module.path}.{OUT_PROJ}"
                self.by_name[module_key(out)] = LoRALayer(
                    module.d_in, module.d_in, config, target.r, target.alpha, **fresh
                )
                self._paths[(MODULE_LAYER, module_key(out))] = out
                self._attention[module.path] = out
            elif module.embedding:
                lora = LoRALayer(
                    module.d_in, module.d_out, config, target.r, target.alpha, embedding=module, **fresh
                )
            elif module.conv is not None:
                lora = self.conv_layer_class(module, config, target.r, target.alpha, **fresh)
                if len(module.conv[0]) in self.declared_conv_dims:
                    self._convs[module.path] = (module.d_in, tuple(int(k) for k in module.conv[0]))
            else:
                lora = self.layer_class(module.d_in, module.d_out, config, target.r, target.alpha, **fresh)
            if module.point is not None and module.layer is not None:
                spec.setdefault(module.layer, {})[module.point] = lora
                self._paths[(module.layer, module.point)] = module.path
            else:
                self.by_name[module_key(module.path)] = lora
                self._paths[(MODULE_LAYER, module_key(module.path))] = module.path
        self.layers = nn.ModuleDict({str(i): nn.ModuleDict(spec[i]) for i in sorted(spec)})

    def conv_modules(self) -> dict[str, tuple[int, tuple[int, ...]]]:
        return dict(self._convs)

    def module_paths(self) -> dict[tuple[int, str], str]:
        """``(layer, point) -> module path`` of every target chosen by ``target_modules`` (module targets:
        ``(MODULE_LAYER, module_key(path))``)."""
        return dict(self._paths)

    def lora_targets(self) -> Iterator[tuple[int, str, LoRALayer]]:
        """``(layer, point, LoRALayer)`` of every target: spec points, then module targets as
        ``(MODULE_LAYER, path, ...)``."""
        for key, sites in self.layers.items():
            for point, lora in sites.items():  # type: ignore[union-attr,operator]
                yield int(key), point, lora
        for key, lora in self.by_name.items():
            yield MODULE_LAYER, self._paths[(MODULE_LAYER, key)], lora  # type: ignore[misc]

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

    @classmethod
    def conv_shapes_from(
        cls, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[tuple[str, int, int, tuple[int, ...]], ...]:
        """``(point, c_in, c_out, kernel)`` of convolution targets: ``A`` ``(r, c_in, *kernel)`` and ``B``
        ``(c_out, r, 1, ...)`` (a Conv1d, Conv2d or Conv3d: 3, 4 or 5 dimensions)."""
        down: dict[str, torch.Tensor] = {}
        up: dict[str, int] = {}
        for key, tensor in tensors.items():
            match = _KEY.match(key)
            if match and tensor.dim() in (3, 4, 5):
                if match.group(3) == "A":
                    down[match.group(2)] = tensor
                else:
                    up[match.group(2)] = int(tensor.shape[0])
        return tuple(
            (p, int(a.shape[1]), up[p], tuple(int(k) for k in a.shape[2:]))
            for p, a in down.items()
            if p in up
        )

    def points(self, layer: int) -> tuple[Point, ...]:
        return self._points.get(layer, ())

    def kinds(self) -> frozenset[str]:
        return frozenset(
            ({LINEAR} if len(self.layers) else set()) | ({MODULE} if len(self.by_name) else set())
        )

    def present(self, layer: int, kind: str, point: str) -> bool:
        if kind == MODULE:
            return module_key(point) in self.by_name
        return super().present(layer, kind, point)

    def layer_at(self, layer: int, point: str | Point) -> LoRALayer:
        """The ``LoRALayer`` at a spec point of ``layer``, or at a point ``("module", path)``."""
        if isinstance(point, tuple):
            if point[0] == MODULE:
                return self.by_name[module_key(point[1])]  # type: ignore[return-value]
            point = point[1]
        return self.layers[str(layer)][point]  # type: ignore[index,return-value]

    def adopt_tensors(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Module targets saved under another path of the same module (``by_name.<path>.<param>``, e.g. peft's names
        for a model saved with another head, or a module that is a spec point here) renamed to this adapter's keys:
        the path is matched exactly, else as a dotted suffix either way (when that picks one target)."""
        self.awaiting_data = False  # a data init's weights come from the file: no data pass
        tensors = self._adopt_saved(tensors)
        if not self._paths:
            return dict(tensors)
        own = {path: key for key, path in self._paths.items()}
        out: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            match = _BY_NAME_KEY.match(name)
            if match is None or match.group(1) in self.by_name:
                out[name] = tensor
                continue
            path, param = match.group(1).replace(":", "."), match.group(2)
            found = own.get(path)
            if found is None:
                near = [p for p in own if p.endswith(f".{path}") or path.endswith(f".{p}")]
                found = own[near[0]] if len(near) == 1 else None
            if found is None:
                out[name] = tensor  # left for load_exact to report
            elif found[0] == MODULE_LAYER:
                out[f"by_name.{found[1]}.{param}"] = tensor
            else:
                out[f"layers.{found[0]}.{found[1]}.{param}"] = tensor
        return out

    def _adopt_saved(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Copies of ``modules_to_save``, held biases and token rows saved under another path of the same module
        (``saved.<path>.<param>``, ``biases.<path>``, ``tokens.<path>``) renamed to this adapter's: matched exactly, else as a dotted suffix either way (when that picks one)."""
        saved = {path: module_key(path) for path in self._saved_paths}
        biases = {path: module_key(path) for path in self._bias_paths}
        tokens = {path: module_key(path) for path in self._token_rows}
        out: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            match = _SAVED_KEY.match(name) or _BIAS_KEY.match(name)
            kind = name.split(".", 1)[0]
            own = {"saved": saved, "biases": biases, "tokens": tokens}.get(kind, {})
            if match is None or match.group(1) in own.values():
                out[name] = tensor
                continue
            path = match.group(1).replace(":", ".")
            near = [p for p in own if p == path or p.endswith(f".{path}") or path.endswith(f".{p}")]
            if len(near) != 1:
                out[name] = tensor  # left for load_exact to report
            elif name.startswith("saved."):
                out[f"saved.{own[near[0]]}.{match.group(2)}"] = tensor
            else:
                out[f"{kind}.{own[near[0]]}"] = tensor
        return out

    def check_ready(self) -> None:
        """Refuse to run a data-init adapter (``init="eva"`` / ``"corda"`` / ``"lora_ga"``) before its data pass."""
        if self.awaiting_data:
            init = self.config.init  # type: ignore[attr-defined]
            raise ConfigError(
                f"Adapter {self.adapter_name!r} has init={init!r}: its factors come from statistics of data. Run "
                f"model.{DATA_INITS[init]}({self.adapter_name!r}, dataloader) before training or using it (or load "
                "trained weights with load_adapter)."
            )

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> LinearRunning:
        self.check_ready()
        out_proj = self._attention.get(point[1]) if point[0] == MODULE else None
        if (
            out_proj is not None
        ):  # an nn.MultiheadAttention: add this adapter's weight updates (methods.lora_mha)
            inner = self.layer_at(layer, point)
            outer = self.layer_at(layer, (MODULE, out_proj))
            return running.plus(inner.weight_delta(), outer.weight_delta())  # type: ignore[no-any-return]
        x = inputs.x  # type: ignore[attr-defined]
        return running.with_y(self.layer_at(layer, point).add_to(running.y, x))  # type: ignore[no-any-return]

    def batch_split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        sizes: Sequence[int],
    ) -> torch.Tensor | None:
        """Row block ``k`` through adapter ``k``'s ``A`` and ``B`` in two batched matmuls (peft's mixed-adapter
        batch; ``lora_grouped.batch_split``). Needs equal rank and dropout; else None (the interpreter runs the row
        blocks one by one)."""
        if not self._groups_with(modules):
            return None
        return lora_grouped.batch_split(modules, layer, point, inputs, sizes)

    def split_grouped(
        self,
        modules: Sequence[AdapterModule],
        layer: int,
        point: Point,
        inputs: PointInputs,
        bounds: Sequence[tuple[int, int]],
    ) -> torch.Tensor | None:
        """Token slice ``k`` through adapter ``k`` (a packed row's segments; ``lora_grouped.split``): equal slices
        end to end in two batched matmuls, others in two dense matmuls with a ``(T, R)`` scale mask. Plain LoRA of
        equal dropout on projections only; None when the masked layout would need ``R > d_in``."""
        if not self._groups_with(modules):
            return None
        return lora_grouped.split(modules, layer, point, inputs, bounds)

    def _groups_with(self, modules: Sequence[AdapterModule]) -> bool:
        """Whether ``modules`` are all of this class (a subclass, DoRA or gated, computes otherwise); raises for one
        that still waits for its data pass."""
        kind = type(self)
        for m in modules:
            if type(m) is not kind:
                return False
        for m in modules:
            if m.awaiting_data:  # type: ignore[attr-defined]
                m.check_ready()  # type: ignore[operator]
        return True

    def merged_deltas(self) -> Iterator[tuple[int, str, torch.Tensor]]:
        self.check_ready()
        for _, _, lora in self.lora_targets():
            if isinstance(lora, ConvLoRALayer):
                lora.check_mergeable()  # a grouped convolution raises, before the first weight changes
        for layer, point, lora in self.lora_targets():
            yield layer, point, lora.weight_delta()

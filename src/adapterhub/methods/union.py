"""Method unions: several methods under one adapter name (the `adapters` library's ``ConfigUnion``).

``MethodUnion(a, b, ...)`` holds one config per part; ``UnionAdapter`` builds one sub-module per part
(``parts.<i>``: state-dict keys are the part's own keys prefixed by ``parts.<i>.``, ``i`` the part's index in the
union, e.g. ``parts.0.wte.weight``, ``parts.1.layers.3.ffn.down.weight``). The union occupies every point any part
occupies; at a point it runs the parts that occupy it in the union's order, exactly as ``Stack`` runs separate
adapters (each part's ``stack_step`` on the running value, the last part's ``stack_leave``). So
``MethodUnion(a, b)`` named ``u`` computes what ``Stack("a", "b")`` of two adapters with the same weights
computes.

Validation: parts must be method configs (no nested unions; at least two parts). Parts of the same method are
allowed (the `adapters` library refuses them unless bottleneck adapters sit at different sites): where they share
a point they apply in order, as in a Stack. A parallel adapter reads the sub-layer input, so at a point it must be
the first part (checked when the module is built, naming the parts); otherwise nothing conflicts.

Composition: ``composable`` is the intersection of the parts' blocks, without ``Fuse`` (AdapterFusion mixes one
output vector per adapter; a union has none of its own). ``mergeable`` only if every part is; merging applies the
parts' updates one after the other.

Presets: ``mam`` (He et al. 2022), exactly the `adapters` library's ``MAMConfig``: prefix tuning (prefix length 30,
reparametrisation width 800) + a parallel adapter on the FFN (``ParBnConfig``: reduction factor 2, scaling 4,
``mam_adapter`` init). ``unipelt`` (Mao et al. 2022), exactly its ``UniPELTConfig``: gated prefix tuning (prefix
length 10), a gated sequential bottleneck adapter (``seq_bn``, reduction factor 16) and gated LoRA (r 8, alpha 2),
see ``methods/gating.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    ALL_BLOCKS,
    METHODS,
    AdapterModule,
    BaseWeights,
    ModelDims,
    Point,
    PointInputs,
    method_for_config,
    register_method,
)
from adapterhub.spec.configs import MethodConfig, register_config, resolve_config


@dataclass(frozen=True, init=False)
class MethodUnion(MethodConfig):
    """Several method configs under one adapter: ``MethodUnion(PrefixTuningConfig(), ParallelConfig())``; each
    part may also be a preset name or a dict (``MethodUnion("prefix_tuning", "par_bn")``). JSON:
    ``{"method": "union", "configs": [<part>, ...]}``."""

    method: ClassVar[str] = "union"

    configs: tuple[MethodConfig, ...]

    def __init__(self, *configs: Any, **kwargs: Any) -> None:
        if "configs" in kwargs:
            if configs:
                raise ConfigError("Give the parts of a MethodUnion either as arguments or as configs=[...].")
            given = kwargs.pop("configs")
            configs = tuple(given) if isinstance(given, (list, tuple)) else (given,)
        if kwargs:
            raise ConfigError(
                f"Unknown key(s) {', '.join(repr(k) for k in kwargs)} for MethodUnion; valid keys: configs."
            )
        parts: list[MethodConfig] = []
        for i, config in enumerate(configs):
            if isinstance(config, MethodUnion) or (
                isinstance(config, Mapping) and config.get("method") == "union"
            ):
                raise ConfigError(f"Part {i} of a MethodUnion is itself a union; list its parts instead.")
            if not isinstance(config, (MethodConfig, str, Mapping)):
                raise ConfigError(
                    f"Part {i} of a MethodUnion must be a method config, a preset name or a dict, got "
                    f"{type(config).__name__}."
                )
            parts.append(resolve_config(config))
        if len(parts) < 2:
            raise ConfigError(f"A MethodUnion needs at least two parts, got {len(parts)}.")
        object.__setattr__(self, "configs", tuple(parts))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "configs": [c.to_dict() for c in self.configs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodUnion:  # type: ignore[override]
        if not isinstance(data, Mapping):
            raise ConfigError(f"MethodUnion must be built from a dict, got {type(data).__name__}.")
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ConfigError(f"MethodUnion is for method 'union', but the dict says {method!r}.")
        unknown = [k for k in data if k != "configs"]
        if unknown:
            raise ConfigError(
                f"Unknown key(s) {', '.join(repr(k) for k in unknown)} for MethodUnion; valid keys: configs."
            )
        if "configs" not in data:
            raise ConfigError("A MethodUnion dict needs 'configs': the list of its parts.")
        return cls(configs=data["configs"])

    def replace(self, **changes: Any) -> MethodUnion:  # type: ignore[override]
        return self.from_dict({**self.to_dict(), **changes})

    def __len__(self) -> int:
        return len(self.configs)

    def __getitem__(self, index: int) -> MethodConfig:
        return self.configs[index]

    @property
    def leave_out(self) -> tuple[int, ...]:
        """Layers that no part occupies (for tools that read ``leave_out`` off a config)."""
        sets = [set(getattr(c, "leave_out", ())) for c in self.configs]
        return tuple(sorted(set.intersection(*sets)))


def mam() -> MethodUnion:
    """The `adapters` library's ``MAMConfig``: ``PrefixTuningConfig(bottleneck_size=800)`` + ``ParBnConfig()``."""
    from adapterhub.methods.parallel_adapter import ParallelConfig
    from adapterhub.methods.prefix_tuning import PrefixTuningConfig

    return MethodUnion(PrefixTuningConfig(bottleneck_size=800), ParallelConfig())


def unipelt() -> MethodUnion:
    """The `adapters` library's ``UniPELTConfig``: gated ``PrefixTuningConfig(prefix_length=10)``, gated
    ``SeqBnConfig(reduction_factor=16)``, gated ``LoRAConfig(r=8, alpha=2)``, in that order."""
    from adapterhub.methods.gating import GatedBottleneckConfig, GatedLoRAConfig, GatedPrefixTuningConfig

    return MethodUnion(
        GatedPrefixTuningConfig(prefix_length=10),
        GatedBottleneckConfig(reduction_factor=16),
        GatedLoRAConfig(r=8, alpha=2),
    )


register_config(MethodUnion, {"mam": mam, "unipelt": unipelt})


@register_method("union")
class UnionAdapter(AdapterModule):
    """One sub-module per part of a ``MethodUnion`` (``parts[i]``), dispatched by attachment point."""

    config_cls = MethodUnion
    config: MethodUnion

    def __init__(self, name: str, config: MethodUnion, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        self.parts = nn.ModuleList([method_for_config(c)(name, c, dims) for c in config.configs])
        self._at: dict[int, dict[Point, tuple[int, ...]]] = {}
        for layer in range(dims.num_layers):
            table: dict[Point, list[int]] = {}
            for i, part in enumerate(self.parts):
                for point in part.points(layer):  # type: ignore[operator]
                    table.setdefault(point, []).append(i)
            self._at[layer] = {point: tuple(owners) for point, owners in table.items()}
            for point, owners in table.items():
                later_parallel = [i for i in owners[1:] if self.parts[i].method == "parallel"]
                if later_parallel:
                    raise ConfigError(
                        f"Union part {later_parallel[0]} (a parallel adapter) shares the {point[0]} point "
                        f"{point[1]!r} with part {owners[0]} ({self.parts[owners[0]].method}) and comes after it: a "
                        "parallel adapter reads the sub-layer input, so it must be the first part at its point. "
                        "Put it first in the union."
                    )
        composable = frozenset.intersection(ALL_BLOCKS, *(p.composable for p in self.parts))  # type: ignore[arg-type]
        object.__setattr__(self, "composable", composable - {"Fuse"})
        object.__setattr__(self, "mergeable", all(p.mergeable for p in self.parts))

    @classmethod
    def linear_shapes_from(cls, tensors: Mapping[str, torch.Tensor]) -> tuple[tuple[str, int, int], ...]:
        """Each part's keys (``parts.<i>.``) through every method's ``linear_shapes_from``."""
        by_part: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            if key.startswith("parts."):
                index, rest = key[len("parts.") :].split(".", 1)
                by_part.setdefault(index, {})[rest] = tensor
        shapes: dict[str, tuple[str, int, int]] = {}
        for sub in by_part.values():
            for method in METHODS.values():
                if method is cls:
                    continue
                for shape in method.linear_shapes_from(sub):
                    shapes.setdefault(shape[0], shape)
        return tuple(shapes.values())

    def part(self, index: int) -> AdapterModule:
        return self.parts[index]  # type: ignore[return-value]

    def points(self, layer: int) -> tuple[Point, ...]:
        return tuple(self._at.get(layer, {}))

    def kinds(self) -> frozenset[str]:
        return frozenset().union(*(p.kinds() for p in self.parts))  # type: ignore[operator]

    def present(self, layer: int, kind: str, point: str) -> bool:
        return (kind, point) in self._at.get(layer, {})

    def _owners(self, layer: int, point: Point) -> tuple[int, ...]:
        return self._at.get(layer, {}).get(point, ())

    # ---- composition protocol: the parts at the point, in order, as a Stack
    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> Any:
        for i in self._owners(layer, point):
            running = self.part(i).stack_step(layer, point, running, inputs)
        return running

    def stack_leave(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> torch.Tensor:
        owners = self._owners(layer, point)
        if not owners:
            return inputs.finish(running)
        return self.part(owners[-1]).stack_leave(layer, point, running, inputs)

    # ---- merging and base-dependent init
    def merged_deltas(self) -> Iterator[tuple[int, str, torch.Tensor]]:
        self._require_mergeable()
        for part in self.parts:
            yield from part.merged_deltas()  # type: ignore[operator]

    def merge_updates(
        self, base: BaseWeights, merge: bool
    ) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor | None]]:
        self._require_mergeable()
        parts = list(self.parts) if merge else list(self.parts)[::-1]  # unmerge in reverse order
        for part in parts:
            yield from part.merge_updates(base, merge)  # type: ignore[operator]

    def _require_mergeable(self) -> None:
        if not self.mergeable:
            methods = [self.part(i).method for i in range(len(self.parts)) if not self.part(i).mergeable]
            raise ConfigError(
                f"Union adapter {self.adapter_name!r} cannot be merged: its part(s) {', '.join(methods)} are not a "
                "change of weights (a union merges only when every part is LoRA, DoRA or (IA)³)."
            )

    def training_loss(self) -> torch.Tensor | None:
        """The sum of the parts' loss terms (None when no part has one)."""
        terms = [term for part in self.parts if (term := part.training_loss()) is not None]  # type: ignore[operator]
        return torch.stack(terms).sum() if terms else None

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Each part's ``after_optimizer_step``; a part whose config changed (AdaLoRA's ``rank_pattern``) changes
        the union's config, so it is saved with the adapter."""
        for part in self.parts:
            part.after_optimizer_step(step, total_steps)  # type: ignore[operator]
        configs = [part.config for part in self.parts]
        if any(new is not old for new, old in zip(configs, self.config.configs, strict=True)):
            self.config = MethodUnion(*configs)  # type: ignore[arg-type]

    def init_from_base(self, base: BaseWeights) -> None:
        for part in self.parts:
            part.init_from_base(base)  # type: ignore[operator]

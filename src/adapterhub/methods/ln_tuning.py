"""LN tuning (Zhao et al. 2023, "Tuning LayerNorm in Attention"; peft's ``LNTuningModel``): a trainable copy of
chosen normalisation modules runs in their place.

For a chosen norm ``y = norm(x; γ, β)`` (``LayerNorm``: ``γ ⊙ (x - μ) / sqrt(σ² + ε) + β``; an RMSNorm:
``γ ⊙ x / sqrt(mean(x²) + ε)``) the adapter holds a deep copy of the module and, while it is active, the point's
output is the copy's::

    y' = copy(x) = norm(x; γ', β')          x, y': (..., d)    γ', β': (d,)

``γ'`` / ``β'`` start as the base's (a new adapter is the identity) and are the only trained parameters; the
norm's own ε and form are the module's, since the copy is the module (as peft deep-copies it). Parameters:
``2 d`` per LayerNorm, ``d`` per RMSNorm.

Attachment: a module point ``("module", path)`` per norm; the model hands the adapter its copies before weights
load (``copied_paths`` / ``set_saved``). State-dict keys: ``copies.<path with ":">.<param>``.

Composition, by the math: the adapter *replaces* the point's value, so a Stack of two adapters at the same norm
has no single answer (which copy? the second would discard the first) and raises, naming both; other points of a
Stack compose as usual. BatchSplit / Split / Parallel run each row block (position block) through its own
adapter's copy; Average mixes the copies' outputs ``Σ w_i copy_i(x)``; Fuse (a mix of adapter deltas) does not
apply. Merging writes ``γ'`` / ``β'`` into the model's norm and keeps the originals to write back on unmerge (as
peft swaps the modules): both bit for bit.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import (
    ALL_BLOCKS,
    MODULE,
    MODULE_LAYER,
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
from adapterhub.spec.configs import LNTuningConfig

_PARAMS = ("weight", "bias")  # what a norm copy may hold (merging writes these into the model's norm)


def is_norm(module: NamedModule) -> bool:
    """Whether a module is a normalisation module by its class name (``LayerNorm``, ``LlamaRMSNorm``, ...)."""
    return module.type_name.endswith("Norm")


def _named(names: str | tuple[str, ...], key: str) -> bool:
    """peft's rule: a string is a regex over the whole name; a list matches a name equal to an entry or ending
    in ``"." + entry``."""
    if isinstance(names, str):
        return re.fullmatch(names, key) is not None
    return key in names or any(key.endswith(f".{name}") for name in names)


def select_norms(config: LNTuningConfig, dims: ModelDims) -> tuple[str, ...]:
    """The paths of the norms ``config`` selects on a model (see ``LNTuningConfig``); raises naming what was
    asked when nothing matches, or when a match is not a normalisation module."""
    if not dims.modules:
        raise ConfigError(
            "LN tuning selects norms by module name, but this model's module list is not known (ModelDims.modules "
            "is empty); add or load the adapter through the model (model.add_adapter / model.load_adapter)."
        )
    chosen: list[str] = []
    for module in dims.modules:
        if config.exclude_modules is not None and _named(config.exclude_modules, module.path):
            continue
        if config.target_modules is None:
            if is_norm(module) and module.layer is not None:
                chosen.append(module.path)
            continue
        if not _named(config.target_modules, module.path):
            continue
        if not is_norm(module):
            raise ConfigError(
                f"target_modules={config.target_modules!r} selects {module.path!r}, a {module.type_name}; LN tuning "
                "copies normalisation modules (class names ending in 'Norm'). Narrow target_modules, or keep a "
                "full trainable copy of other modules with a LoRA adapter's modules_to_save."
            )
        chosen.append(module.path)
    if not chosen:
        what = "no normalisation module inside the layers" if config.target_modules is None else "nothing"
        raise ConfigError(
            f"LN tuning's target_modules={config.target_modules!r} (exclude_modules={config.exclude_modules!r}) "
            f"selects {what} on this {dims.model_type} model; name its norms, e.g. "
            f"{sorted({m.path.rsplit('.', 1)[-1] for m in dims.modules if is_norm(m)})[:4]}."
        )
    return tuple(chosen)


def copy_key(path: str) -> str:
    """The key of a norm's copy in ``LNTuningAdapter.copies`` (``.`` -> ``:``, which ModuleDict keys cannot
    hold)."""
    return path.replace(".", ":")


@register_method("ln_tuning")
class LNTuningAdapter(AdapterModule):
    """LN tuning over the chosen norms: ``copies[copy_key(path)]`` is the trainable copy of the norm at ``path``,
    run at the point ``("module", path)`` of layer ``MODULE_LAYER``."""

    config_cls = LNTuningConfig
    config: LNTuningConfig
    composable: ClassVar[frozenset[str]] = ALL_BLOCKS - {"Fuse"}
    mergeable: ClassVar[bool] = True

    def __init__(self, name: str, config: LNTuningConfig, dims: ModelDims) -> None:
        super().__init__(name, config, dims)
        self._paths = select_norms(config, dims)
        self.copies = nn.ModuleDict()
        # merged: the model's own (γ, β) of each norm, written back by unmerge (model-level state, not per call)
        self._originals: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def points(self, layer: int) -> tuple[Point, ...]:
        return tuple((MODULE, path) for path in self._paths) if layer == MODULE_LAYER else ()

    def kinds(self) -> frozenset[str]:
        return frozenset({MODULE})

    def present(self, layer: int, kind: str, point: str) -> bool:
        return layer == MODULE_LAYER and kind == MODULE and point in self._paths

    def copied_paths(self) -> tuple[str, ...]:
        return self._paths

    def set_saved(self, path: str, copy: nn.Module) -> None:
        """Hold ``copy`` (a trainable copy of the model's norm at ``path``); a norm with nothing to train (no
        affine parameters) or with parameters other than ``weight`` / ``bias`` is refused by name."""
        names = [name for name, _ in copy.named_parameters()]
        if not names or any(name not in _PARAMS for name in names):
            raise ConfigError(
                f"LN tuning cannot tune {path!r} ({type(copy).__name__}): it has parameters {names or 'none'}, and "
                f"LN tuning trains a norm's {' / '.join(_PARAMS)}. Leave it out (exclude_modules)."
            )
        self.copies[copy_key(path)] = copy

    def saved_module(self, path: str) -> nn.Module:
        """The trainable copy of the norm at ``path``."""
        return self.copies[copy_key(path)]

    def stack_step(self, layer: int, point: Point, running: Any, inputs: PointInputs) -> LinearRunning:
        """``y' = copy(x)``: ``(..., d) -> (..., d)``; after another adapter changed the point's value in a Stack,
        raises (two replacements of one norm have no single answer)."""
        assert isinstance(inputs, LinearInputs) and isinstance(running, LinearRunning)
        if not inputs.holds_own_output(running):
            raise ConfigError(
                f"LN tuning adapter {self.adapter_name!r} replaces the norm {point[1]!r} by its own copy, but in this "
                "Stack another adapter before it already replaced that norm's output, so the Stack has no single "
                "answer. Activate one LN tuning adapter per norm (BatchSplit gives each its own rows)."
            )
        out = self.saved_module(point[1])(inputs.x)  # (..., d)
        return running.with_y(out.to(running.y.dtype))

    def merge_writes(
        self, base: BaseWeights, merge: bool
    ) -> Iterator[tuple[int, str, torch.Tensor, torch.Tensor | None]]:
        """Merge: keep each norm's ``(γ, β)`` and write the copy's ``(γ', β')`` into it; unmerge: write the kept
        ones back."""
        for path in self._paths:
            if merge:
                weight, bias = base(MODULE_LAYER, path)
                self._originals[path] = (
                    weight.detach().clone(),
                    None if bias is None else bias.detach().clone(),
                )
                copy = self.saved_module(path)
                tuned: torch.Tensor = copy.get_parameter("weight")  # (d,)
                tuned_bias: torch.Tensor | None = getattr(copy, "bias", None)
                yield (
                    MODULE_LAYER,
                    path,
                    tuned.detach(),
                    (None if tuned_bias is None else tuned_bias.detach()),
                )
            else:
                weight, bias = self._originals.pop(path)
                yield MODULE_LAYER, path, weight, bias

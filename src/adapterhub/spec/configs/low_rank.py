"""The LoRA config (Hu et al. 2021) and the projections (spec points) low-rank methods attach to."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from adapterhub.spec.configs.base import OMIT_DEFAULT, C, MethodConfig
from adapterhub.spec.configs.checks import check_bool, check_choice, is_number, layer_list, require
from adapterhub.spec.module_names import ALL_LINEAR, module_names, pattern_table

LINEAR_POINTS = (
    "q",
    "k",
    "v",
    "attn_out",
    "ffn_in",
    "ffn_gate",
    "ffn_out",
    # the cross-attention projections of encoder-decoder decoders
    "cross_q",
    "cross_k",
    "cross_v",
    "cross_out",
)
LORA_INITS = ("lora", "gaussian")


@dataclass(frozen=True, kw_only=True)
class LoRAConfig(MethodConfig):
    """LoRA (Hu et al. 2021): ``y = W x + b + s · B A dropout(x)`` on each target projection, ``s = alpha / r``
    (``use_rslora``: ``alpha / sqrt(r)``).

    ``targets``: any of ``q``, ``k``, ``v``, ``attn_out``, ``ffn_in``, ``ffn_gate`` (the gate of a gated FFN, e.g.
    Llama's ``gate_proj``), ``ffn_out`` (default ``q``, ``v``); ``init``: ``"lora"`` (A Kaiming-uniform, B zero, as
    the paper) or ``"gaussian"`` (A normal with std 1/r, B zero); ``leave_out``: layers without LoRA. Parameters:
    ``r · (d_in + d_out)`` per target and layer.

    Targeting by name instead (peft's semantics), on any ``nn.Linear`` or GPT-2 ``Conv1D`` of the model:
    ``target_modules`` (a list of names, each matching a module named so or ending in ``"." + name``; a string is
    a regex over whole names; ``"all-linear"``: every Linear/Conv1D but the output embeddings), ``exclude_modules``
    (same forms), ``layers_to_transform`` (layer indices, read from the module name, after ``layers_pattern`` when
    given), ``rank_pattern`` / ``alpha_pattern`` (``{regex: r}``: the first key, in key order, that matches the end
    of a module's name gives its rank / alpha). ``targets`` and ``leave_out`` then stay empty.

    ``modules_to_save`` (with either way of targeting): names of modules (peft's rule: every module whose path
    ends with a name) of which the adapter keeps a full trainable copy, e.g. ``["classifier"]``; the copy runs in
    place of the module while the adapter is active, the original otherwise.
    """

    method: ClassVar[str] = "lora"

    r: int = 8
    alpha: float = 8
    dropout: float = 0.0
    targets: tuple[str, ...] = None  # type: ignore[assignment]  # None: ("q", "v"); () with target_modules
    use_rslora: bool = False
    init: str = "lora"
    leave_out: tuple[int, ...] = field(default_factory=tuple)
    target_modules: str | tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    exclude_modules: str | tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    layers_to_transform: tuple[int, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    layers_pattern: tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    rank_pattern: tuple[tuple[str, int], ...] = field(default=(), metadata={OMIT_DEFAULT: True})
    alpha_pattern: tuple[tuple[str, float], ...] = field(default=(), metadata={OMIT_DEFAULT: True})
    modules_to_save: tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        require(
            isinstance(self.r, int) and not isinstance(self.r, bool) and self.r > 0,
            f"r must be a positive integer, got {self.r!r}.",
        )
        require(
            is_number(self.alpha) and self.alpha > 0, f"alpha must be a positive number, got {self.alpha!r}."
        )
        require(
            is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            f"dropout must be a number in [0, 1), got {self.dropout!r}.",
        )
        check_bool("use_rslora", self.use_rslora)
        check_choice("init", self.init, LORA_INITS)
        object.__setattr__(self, "leave_out", layer_list("leave_out", self.leave_out))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "target_modules", module_names("target_modules", self.target_modules))
        saved = self.modules_to_save
        if saved is not None:
            saved = (saved,) if isinstance(saved, str) else saved
            require(
                isinstance(saved, (list, tuple))
                and len(saved) > 0
                and all(isinstance(m, str) and m for m in saved),
                f"modules_to_save must be a non-empty list of module names (e.g. ['classifier']), got "
                f"{self.modules_to_save!r}.",
            )
            object.__setattr__(self, "modules_to_save", tuple(dict.fromkeys(saved)))
        if self.target_modules is not None:
            self._check_by_name()
        else:
            for option in ("exclude_modules", "layers_to_transform", "layers_pattern"):
                require(
                    getattr(self, option) is None,
                    f"{option} selects modules by name: it needs target_modules (or use targets / leave_out).",
                )
            for option in ("rank_pattern", "alpha_pattern"):
                require(
                    not getattr(self, option),
                    f"{option} sets values per module name: it needs target_modules.",
                )
            targets = ("q", "v") if self.targets is None else self.targets
            targets = (targets,) if isinstance(targets, str) else targets
            require(
                isinstance(targets, (list, tuple)) and len(targets) > 0,
                f"targets must be a non-empty list of projections ({', '.join(LINEAR_POINTS)}), got "
                f"{self.targets!r}.",
            )
            for target in targets:
                check_choice("targets", target, LINEAR_POINTS)
            object.__setattr__(self, "targets", tuple(dict.fromkeys(targets)))

    def _check_by_name(self) -> None:
        require(
            not self.targets,
            f"targets={self.targets!r} and target_modules={self.target_modules!r} both choose where LoRA sits: "
            "name spec points with targets or modules with target_modules, not both.",
        )
        object.__setattr__(self, "targets", ())
        require(
            not self.leave_out,
            "leave_out applies to targets; with target_modules choose layers with layers_to_transform.",
        )
        object.__setattr__(self, "exclude_modules", module_names("exclude_modules", self.exclude_modules))
        require(
            self.exclude_modules != ALL_LINEAR,
            "exclude_modules='all-linear' would exclude every target; name the modules to leave out.",
        )
        layers = self.layers_to_transform
        if layers is not None:
            require(
                not isinstance(self.target_modules, str),
                "layers_to_transform cannot be used when target_modules is a regex string (as in peft); put the "
                "layer indices into the regex, or pass target_modules as a list.",
            )
            object.__setattr__(
                self,
                "layers_to_transform",
                layer_list("layers_to_transform", [layers] if isinstance(layers, int) else layers),
            )
        pattern = self.layers_pattern
        if pattern is not None:
            require(
                self.layers_to_transform is not None,
                "layers_pattern names the layer list for layers_to_transform: set layers_to_transform too.",
            )
            pattern = (pattern,) if isinstance(pattern, str) else pattern
            require(
                isinstance(pattern, (list, tuple)) and all(isinstance(p, str) and p for p in pattern),
                f"layers_pattern must be a name or a list of names (e.g. 'layers'), got {self.layers_pattern!r}.",
            )
            object.__setattr__(self, "layers_pattern", tuple(pattern))

        def positive_int(name: str, value: Any) -> None:
            require(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"{name} must be a positive integer rank, got {value!r}.",
            )

        def positive_number(name: str, value: Any) -> None:
            require(is_number(value) and value > 0, f"{name} must be a positive number, got {value!r}.")

        object.__setattr__(
            self, "rank_pattern", pattern_table("rank_pattern", self.rank_pattern, positive_int)
        )
        alphas = pattern_table("alpha_pattern", self.alpha_pattern, positive_number)
        object.__setattr__(self, "alpha_pattern", tuple((k, float(v)) for k, v in alphas))

    @property
    def by_name(self) -> bool:
        """Whether the adapter targets modules by name (``target_modules``) rather than spec points."""
        return self.target_modules is not None

    @property
    def scaling(self) -> float:
        """``s``: ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``."""
        return self.scaling_for(self.r, self.alpha)

    def scaling_for(self, r: int, alpha: float) -> float:
        """``s`` for a target of rank ``r`` and ``alpha`` (``rank_pattern`` / ``alpha_pattern``)."""
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed; ``target_modules`` replaces ``targets`` (and ``targets`` replaces
        ``target_modules``) unless both are given."""
        if "target_modules" in changes and "targets" not in changes:
            changes["targets"] = None
        if "targets" in changes and "target_modules" not in changes and getattr(self, "target_modules", None):
            changes["target_modules"] = None
        return self.from_dict({**self.to_dict(), **changes})

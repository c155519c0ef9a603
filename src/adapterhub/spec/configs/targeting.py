"""Where a low-rank method attaches: spec points (``targets``, ``leave_out``) or modules by name (peft's
``target_modules``, ``exclude_modules``, ``layers_to_transform``, ``layers_pattern``, ``rank_pattern``,
``alpha_pattern``), plus ``modules_to_save``. ``ModuleTargeting`` validates and freezes these fields for every
config that has them (LoRA, LoHa, LoKr, OFT, BOFT); ``LowRankTargeting`` declares them once for the configs that have
all of them (LoRA, LoHa, LoKr); ``methods.targeting`` applies them to a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from adapterhub.spec.configs.base import OMIT_DEFAULT
from adapterhub.spec.configs.checks import check_choice, is_number, layer_list, require
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

T = TypeVar("T", bound="ModuleTargeting")


def _ids(name: str, value: Any) -> tuple[int, ...]:
    require(
        isinstance(value, (list, tuple))
        and len(value) > 0
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value),
        f"{name} must be a non-empty list of token ids (integers >= 0), got {value!r}.",
    )
    require(len(set(value)) == len(value), f"{name} lists a token id twice: {list(value)!r}.")
    return tuple(value)


def token_indices(value: Any) -> tuple[int, ...] | tuple[tuple[str, tuple[int, ...]], ...] | None:
    """``trainable_token_indices`` frozen: a list of token ids (the input embeddings' rows), or ``{embedding module
    name: ids}`` as (name, ids) pairs in the order given (peft's two forms); ids keep their order (the row order of
    the trained copy)."""
    if value is None:
        return None
    pairs: Any = value.items() if isinstance(value, dict) else None
    if (
        pairs is None
        and isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], str) for v in value)
    ):
        pairs = value
    if pairs is None:
        return _ids("trainable_token_indices", value)
    out = tuple((name, _ids(f"trainable_token_indices[{name!r}]", ids)) for name, ids in pairs)
    require(
        len(out) > 0 and all(isinstance(n, str) and n for n, _ in out),
        f"trainable_token_indices must name embedding modules (e.g. {{'embed_tokens': [0, 1]}}), got {value!r}.",
    )
    return out


class ModuleTargeting:
    """Mixin of the frozen configs that attach to linear projections. The config declares the fields below (as
    dataclass fields) and calls ``check_targeting`` from ``__post_init__``: either ``targets`` (spec points, default
    ``q``, ``v``) and ``leave_out``, or ``target_modules`` with the other by-name options; never both."""

    adapts_conv2d: ClassVar[bool] = (
        False  # whether nn.Conv2d modules may be targeted by name (LoRA: its own rule)
    )
    # whether ``rank_pattern`` / ``alpha_pattern`` are peft's per-module ``{regex: value}`` tables (LoRA, LoHa, ...);
    # AdaLoRA's ``rank_pattern`` is its rank allocator's result instead, validated by its config
    module_patterns: ClassVar[bool] = True

    if TYPE_CHECKING:
        method: ClassVar[str]
        r: int
        alpha: float
        targets: tuple[str, ...]
        leave_out: tuple[int, ...]
        target_modules: str | tuple[str, ...] | None
        exclude_modules: str | tuple[str, ...] | None
        layers_to_transform: tuple[int, ...] | None
        layers_pattern: tuple[str, ...] | None
        rank_pattern: tuple[tuple[str, int], ...]
        alpha_pattern: tuple[tuple[str, float], ...]
        modules_to_save: tuple[str, ...] | None

        def from_dict(self, data: Any) -> Any: ...

        def to_dict(self) -> dict[str, Any]: ...

    def check_targeting(self, what: str) -> None:
        """Validate and freeze the targeting fields; ``what`` names the method in messages (``"LoRA"``)."""
        object.__setattr__(self, "leave_out", layer_list("leave_out", self.leave_out))
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
            self._check_by_name(what)
        else:
            for option in ("exclude_modules", "layers_to_transform", "layers_pattern"):
                require(
                    getattr(self, option) is None,
                    f"{option} selects modules by name: it needs target_modules (or use targets / leave_out).",
                )
            for option in ("rank_pattern", "alpha_pattern") if self.module_patterns else ():
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

    def _check_by_name(self, what: str) -> None:
        require(
            not self.targets,
            f"targets={self.targets!r} and target_modules={self.target_modules!r} both choose where {what} sits: "
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

        if not self.module_patterns:
            return
        object.__setattr__(
            self, "rank_pattern", pattern_table("rank_pattern", self.rank_pattern, positive_int)
        )
        alphas = pattern_table("alpha_pattern", self.alpha_pattern, positive_number)
        object.__setattr__(self, "alpha_pattern", tuple((k, float(v)) for k, v in alphas))

    @property
    def by_name(self) -> bool:
        """Whether the adapter targets modules by name (``target_modules``) rather than spec points."""
        return self.target_modules is not None

    def replace(self: T, **changes: Any) -> T:
        """A copy with some fields changed; ``target_modules`` replaces ``targets`` (and ``targets`` replaces
        ``target_modules``) unless both are given."""
        if "target_modules" in changes and "targets" not in changes:
            changes["targets"] = None
        if "targets" in changes and "target_modules" not in changes and getattr(self, "target_modules", None):
            changes["target_modules"] = None
        out: T = self.from_dict({**self.to_dict(), **changes})
        return out


@dataclass(frozen=True, kw_only=True)
class NamedTargeting(ModuleTargeting):
    """The targeting fields of configs that attach by spec point or by module name (OFT, BOFT, and through
    :class:`LowRankTargeting` LoRA, LoHa, LoKr), declared once: ``targets`` (default ``None``: ``q``, ``v``; ``()``
    with ``target_modules``), ``leave_out``, and the by-name options, which ``to_dict`` omits at their defaults
    (configs written before them keep their JSON and hash). The config calls ``check_targeting`` from its
    ``__post_init__``."""

    targets: tuple[str, ...] = None  # type: ignore[assignment]  # None: ("q", "v"); () with target_modules
    leave_out: tuple[int, ...] = field(default_factory=tuple)
    target_modules: str | tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    exclude_modules: str | tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    layers_to_transform: tuple[int, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    layers_pattern: tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})
    modules_to_save: tuple[str, ...] | None = field(default=None, metadata={OMIT_DEFAULT: True})


@dataclass(frozen=True, kw_only=True)
class LowRankTargeting(NamedTargeting):
    """:class:`NamedTargeting` plus the per-module rank and alpha of the low-rank configs (LoRA, LoHa, LoKr),
    omitted by ``to_dict`` at their defaults."""

    rank_pattern: tuple[tuple[str, int], ...] = field(default=(), metadata={OMIT_DEFAULT: True})
    alpha_pattern: tuple[tuple[str, float], ...] = field(default=(), metadata={OMIT_DEFAULT: True})

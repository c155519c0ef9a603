"""The data types of architecture specs and their registry: ``ArchitectureSpec`` (with ``SiteSpec``, ``InputRef``,
``LinearSpec``, ``StackSpec``), ``register_architecture`` and the look-ups by model type and config
(``spec_for_config``, ``spec_for_model_type``, ``unsupported_points``). Data only, no torch: the functions that walk
a model's modules by a spec (``get_base_model``, ``get_layers``, ``layer_stacks``) are in
``adapterhub.runtime.layers``.

The entries themselves (BERT, GPT-2, Llama, T5, ...) live in ``adapterhub.spec.architectures``, which imports this
module and re-exports its names; import from there, so that the entries are registered before any look-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapterhub.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class InputRef:
    """An input of a module's forward: positional ``index`` or keyword ``name`` (whichever the caller used)."""

    module: str
    index: int
    name: str


@dataclass(frozen=True)
class SiteSpec:
    output: str
    residual: InputRef
    norm: str | None = None
    output_index: int | None = None  # the output is a tuple: h is this element


@dataclass(frozen=True)
class LinearSpec:
    """A linear projection: ``module`` (path relative to the layer), the ``part=(index, parts)`` of its output
    that is this projection when several are fused in one module, and ``transposed`` for ``Conv1D`` weights."""

    module: str
    part: tuple[int, int] | None = None
    transposed: bool = False
    # config attributes whose values weigh the parts of a fused projection when they may differ (Phi-3's qkv_proj:
    # query heads, key/value heads, key/value heads); parts are sliced equally, so where these values differ the
    # point is unsupported on that model (``unsupported_points``)
    part_units: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to find layers and adapter sites in one family of models (keyed by ``config.model_type``)."""

    model_types: tuple[str, ...]
    layers: str  # path of the ModuleList of transformer layers, relative to the base model
    sites: Mapping[str, SiteSpec]
    hidden_size_attr: str = "hidden_size"
    # Naming used by the `adapters` library for the same sites (for reading and writing its layout).
    adapters_lib_sites: Mapping[str, str] = field(default_factory=dict)
    adapters_lib_layers: str = ""
    # bottleneck adapter modules of that library where they differ from adapters_lib_sites (GPT-2)
    adapters_lib_bottleneck_sites: Mapping[str, str] = field(default_factory=dict)
    linears: Mapping[str, LinearSpec] = field(default_factory=dict)
    # The module paths (relative to a layer) of linear points in the `adapters` library's models (transformers 4.57)
    # where they differ from ``linears`` (ViT: transformers 5 renamed ``attention.attention.query`` to
    # ``attention.q_proj``); ``adapters_lib_module(point)`` reads it.
    adapters_lib_linears: Mapping[str, str] = field(default_factory=dict)
    # The `adapters` library's LoRA locations "intermediate" / "output" -> our linear points.
    adapters_lib_lora: Mapping[str, str] = field(
        default_factory=lambda: {"intermediate": "ffn_in", "output": "ffn_out"}
    )
    attention: str | None = None  # the self-attention module (relative to the layer)
    # The module whose output is the input embeddings entering the first layer (relative to the base model): the
    # ``embedding`` attachment point (invertible adapters). The module the `adapters` library hooks for the same.
    embeddings: str | None = None
    # attachment points ``"kind:point"`` (``"linear:q"``, ``"attention:self"``) or methods ``"method:NAME"`` this
    # family cannot carry, each with the reason; adding such an adapter raises a ConfigError with it
    unsupported: Mapping[str, str] = field(default_factory=dict)
    # Encoder-decoder models (T5, BART): the decoder's layer stack. The fields above describe the encoder; decoder
    # layers are numbered after the encoder's (layer ``len(encoder) + j``), as in the `adapters` library. CLIP's
    # two-tower model uses the same second stack for its vision tower (no cross-attention).
    decoder: StackSpec | None = None
    # The attribute of the model's config that describes the first stack's layers when the config nests one per
    # stack (CLIPConfig: ``text_config``; the second stack's is ``decoder.config``); empty: the config itself.
    stack_config: str = ""
    # This entry applies to configs whose attributes have these values (several entries per model type, the first
    # match wins: T5's plain and gated FFN); empty: every config of its model types.
    config_match: Mapping[str, Any] = field(default_factory=dict)

    def adapters_lib_module(self, point: str) -> str:
        """The module path of the linear ``point`` in the `adapters` library's models: ``adapters_lib_linears``
        where the module was renamed since transformers 4.57, else ``linears[point].module``."""
        return self.adapters_lib_linears.get(point) or self.linears[point].module

    @property
    def pre_norm(self) -> bool:
        return all(site.norm is None for stack in self.stacks() for site in stack.sites.values())

    def decoder_points(self) -> tuple[str, ...]:
        """The points only decoder layers have: residual sites and linear points the encoder lacks, and the
        ``cross`` attention point (empty without a decoder stack)."""
        if self.decoder is None:
            return ()
        encoder = (*self.sites, *self.linears)
        own = tuple(p for p in (*self.decoder.sites, *self.decoder.linears) if p not in encoder)
        return own + (("cross",) if self.decoder.cross_attention else ())

    def stacks(self) -> tuple[StackSpec, ...]:
        """The layer stacks in numbering order: the encoder (or the only stack), then the decoder if any; none for
        a spec with no layer path (a model targeted by module names only)."""
        if not self.layers:
            return ()
        first = StackSpec(
            self.layers,
            self.sites,
            self.linears,
            self.attention,
            config=self.stack_config,
            adapters_lib_layers=self.adapters_lib_layers,
        )
        return (first,) if self.decoder is None else (first, self.decoder)


@dataclass(frozen=True)
class StackSpec:
    """One stack of transformer layers: its ModuleList (relative to the base model), its residual sites, linear
    points and self-attention module (relative to one layer), and in an encoder-decoder decoder the
    cross-attention module (``cross_attention``: the ``("attention", "cross")`` point)."""

    layers: str
    sites: Mapping[str, SiteSpec]
    linears: Mapping[str, LinearSpec] = field(default_factory=dict)
    attention: str | None = None
    cross_attention: str | None = None
    config: str = ""  # the sub-config describing these layers (``ArchitectureSpec.stack_config``), if any
    # the `adapters` library's path of these layers where it names them per stack (CLIPModel's vision tower), with
    # indices counted within the stack (``adapterhub.io.adapters_lib_stacks``); empty: one path for every layer
    adapters_lib_layers: str = ""


def layer_config(spec: ArchitectureSpec, config: Any) -> Any:
    """The config that describes the layers of ``spec``'s first stack: ``config.<stack_config>`` (CLIP's
    ``text_config``), or ``config`` itself."""
    if not spec.stack_config:
        return config
    return getattr(config, spec.stack_config, None) or config


def stack_config(stack: StackSpec, config: Any) -> Any:
    """The config that describes the layers of ``stack``: ``config.<stack.config>`` (CLIP's ``text_config`` /
    ``vision_config``, whose widths and head counts may differ), or ``config`` itself."""
    if not stack.config:
        return config
    return getattr(config, stack.config, None) or config


_REGISTRY: dict[str, ArchitectureSpec] = {}
_VARIANTS: dict[str, list[ArchitectureSpec]] = {}  # model type -> entries with a config_match, in order


def register_architecture(spec: ArchitectureSpec) -> ArchitectureSpec:
    for model_type in spec.model_types:
        if spec.config_match:
            _VARIANTS.setdefault(model_type, []).append(spec)
            _REGISTRY.setdefault(model_type, spec)
        else:
            _REGISTRY[model_type] = spec
    return spec


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def spec_for_model_type(model_type: str) -> ArchitectureSpec:
    if model_type not in _REGISTRY:
        raise UnsupportedArchitectureError(
            f"Model type {model_type!r} has no ArchitectureSpec. Supported: {', '.join(supported_model_types())}. "
            "To add it, call adapterhub.register_architecture(ArchitectureSpec(model_types=("
            f"{model_type!r},), layers=<path of the layer list>, sites={{'attn': SiteSpec(...), 'ffn': SiteSpec(...)}})) "
            "naming the modules around each sub-layer (see docs/ARCHITECTURES.md)."
        )
    return _REGISTRY[model_type]


def unsupported_points(spec: ArchitectureSpec, config: object) -> dict[str, str]:
    """``"kind:point" -> reason`` for every attachment point a model of ``spec`` with this transformers ``config``
    cannot carry: the spec's ``unsupported`` and the slices of a fused projection whose parts differ in width.
    (Stacks of different widths, CLIP's towers, are no reason: adapters size their modules per stack.)"""
    reasons = dict(spec.unsupported)
    for point, linear in spec.linears.items():
        units = {name: getattr(config, name, None) for name in linear.part_units}
        if len(set(units.values())) > 1:
            reasons.setdefault(
                f"linear:{point}",
                f"{linear.module} fuses parts of different widths in this model ({units}); adapterhub slices a "
                "fused projection into equal parts, so this point cannot be targeted here. Target the other "
                "projections (e.g. attn_out, ffn_in, ffn_out) instead.",
            )
    return reasons


def spec_for_config(config: Any) -> ArchitectureSpec:
    """The spec for a transformers config: the first entry of its model type whose ``config_match`` it meets,
    else the model type's plain entry (``spec_for_model_type``)."""
    model_type = str(getattr(config, "model_type", ""))
    for spec in _VARIANTS.get(model_type, ()):
        if all(getattr(config, key, None) == value for key, value in spec.config_match.items()):
            return spec
    return spec_for_model_type(model_type)

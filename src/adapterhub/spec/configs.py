"""Adapter configurations: frozen, keyword-only dataclasses, validated on construction.

A config is data: it can be written as JSON (``to_dict``), read back (``from_dict``), hashed and compared. Unknown
keys and wrong types are rejected with a message that names the valid keys. Presets are addressed by name, with
optional overrides in brackets: ``"pfeiffer"``, ``"houlsby[reduction_factor=64]"``,
``"pfeiffer[leave_out=[0,1],non_linearity=gelu]"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from adapterhub.errors import ConfigError, did_you_mean
from adapterhub.spec.module_names import ALL_LINEAR, module_names, pattern_table

C = TypeVar("C", bound="MethodConfig")
# Field metadata key: leave the field out of ``to_dict`` while it has its default value.
OMIT_DEFAULT = "omit_default"

ACTIVATIONS = ("relu", "swish", "silu", "gelu", "gelu_new", "tanh", "sigmoid", "leakyrelu", "identity")
INIT_SCHEMES = ("bert", "houlsby", "mam_adapter")


def canonical_json(obj: Any) -> str:
    """The one JSON spelling used for hashing: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method config. Subclasses set ``method`` and validate in ``__post_init__``."""

    method: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that ``from_dict`` turns back into an equal config; always holds ``"method"``."""
        out: dict[str, Any] = {"method": self.method}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get(OMIT_DEFAULT) and value == f.default:
                continue  # a later option at its default: configs written before it keep their JSON and hash
            out[f.name] = _to_json_value(value)
        return out

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build a config from a dict, rejecting unknown keys with the list of valid ones."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__} must be built from a dict, got {type(data).__name__}.")
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ConfigError(f"{cls.__name__} is for method {cls.method!r}, but the dict says {method!r}.")
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            hints = "".join(did_you_mean(k, valid) for k in unknown)
            raise ConfigError(
                f"Unknown key(s) {', '.join(repr(k) for k in unknown)} for {cls.__name__}{hints}. "
                f"Valid keys: {', '.join(valid)}."
            )
        return cls(**data)

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated like a new config)."""
        return self.from_dict({**self.to_dict(), **changes})

    def canonical_hash(self) -> str:
        """sha256 of the canonical JSON of ``to_dict()``: equal configs have equal hashes."""
        return sha256_hex(canonical_json(self.to_dict()))


def _to_json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value):
            return {k: _to_json_value(v) for k, v in value}
        return [_to_json_value(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------------- validation


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_bool(name: str, value: Any) -> None:
    _require(
        isinstance(value, bool), f"{name} must be true or false, got {value!r} ({type(value).__name__})."
    )


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    _require(
        isinstance(value, str) and value in choices,
        f"{name}={value!r} is not valid{did_you_mean(str(value), choices)}; choose one of {', '.join(choices)}.",
    )


def layer_list(name: str, value: Any) -> tuple[int, ...]:
    """A list of layer indices (``leave_out``) validated and frozen: sorted, without repeats."""
    _require(
        isinstance(value, (list, tuple))
        and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value),
        f"{name} must be a list of non-negative layer indices, got {value!r}.",
    )
    return tuple(sorted(set(value)))


def _freeze_per_layer(name: str, value: Any, check: Callable[[str, Any], None]) -> Any:
    """A number, or a mapping ``{"default": x, "3": y}`` frozen into a sorted tuple of (key, value) pairs."""
    if isinstance(value, Mapping) or (isinstance(value, tuple) and value and isinstance(value[0], tuple)):
        items = dict(value)
        for key, item in items.items():
            _require(
                key == "default" or (isinstance(key, str) and key.isdigit()) or isinstance(key, int),
                f"{name}: keys must be layer indices or 'default', got {key!r}.",
            )
            check(f"{name}[{key!r}]", item)
        _require(
            "default" in items, f"{name}: a per-layer mapping needs a 'default' entry for the other layers."
        )
        return tuple(sorted((str(k), v) for k, v in items.items()))
    check(name, value)
    return value


# ------------------------------------------------------------------------------------------------ bottleneck


@dataclass(frozen=True, kw_only=True)
class BottleneckConfig(MethodConfig):
    """Bottleneck adapter ``A(x) = W_up · f(W_down · x + b_down) + b_up`` (Houlsby et al. 2019).

    Placement in a sub-layer that computes ``h = sublayer(input)`` followed by ``LN(h + input)``:

    - ``x = LN(h + input)`` if ``original_ln_before`` else ``x = h``
    - adapter residual ``r = h`` if ``residual_before_ln is True``, ``h + input`` if ``"post_add"``, else ``x``
    - ``y = r + scaling · A(norm_before(x))`` (with ``ln_after``: ``norm_after`` applied before or after adding
      ``r``, by ``adapter_residual_before_ln``)
    - ``out = LN(y + input)`` if ``original_ln_after`` else ``y``.

    In pre-norm models (GPT-2, Llama) the sub-layer has no LayerNorm after it: ``LN`` is the identity there.
    Bottleneck width ``m = hidden_size // reduction_factor`` (or ``bottleneck_size``), per layer if a mapping is
    given (``{"default": 16, "0": 2}``). Parameters per adapter: ``2·m·d + d + m``.
    """

    method: ClassVar[str] = "bottleneck"

    after_attention: bool = False
    after_ffn: bool = True
    reduction_factor: float | tuple[tuple[str, float], ...] = 16
    bottleneck_size: int | None = None
    non_linearity: str = "relu"
    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: bool | str = True
    ln_before: bool = False
    ln_after: bool = False
    adapter_residual_before_ln: bool = False
    scaling: float | str = 1.0
    dropout: float = 0.0
    init_weights: str = "bert"
    leave_out: tuple[int, ...] = field(default_factory=tuple)
    # encoder-decoder models: an adapter after each decoder layer's cross-attention (the `adapters` library's
    # ``cross_adapter``); left out of to_dict while false
    after_cross_attention: bool = field(default=False, metadata={OMIT_DEFAULT: True})

    def __post_init__(self) -> None:
        for name in (
            "after_attention",
            "after_cross_attention",
            "after_ffn",
            "original_ln_before",
            "original_ln_after",
            "ln_before",
            "ln_after",
            "adapter_residual_before_ln",
        ):
            _check_bool(name, getattr(self, name))
        _require(
            self.after_attention or self.after_ffn or self.after_cross_attention,
            "after_attention, after_cross_attention and after_ffn are all false: the adapter would sit nowhere. "
            "Set at least one.",
        )

        def positive_number(name: str, value: Any) -> None:
            _require(_is_number(value) and value > 0, f"{name} must be a positive number, got {value!r}.")

        object.__setattr__(
            self,
            "reduction_factor",
            _freeze_per_layer("reduction_factor", self.reduction_factor, positive_number),
        )
        if self.bottleneck_size is not None:
            _require(
                isinstance(self.bottleneck_size, int)
                and not isinstance(self.bottleneck_size, bool)
                and self.bottleneck_size > 0,
                f"bottleneck_size must be a positive integer or null, got {self.bottleneck_size!r}.",
            )
        _check_choice(
            "non_linearity",
            self.non_linearity.lower() if isinstance(self.non_linearity, str) else self.non_linearity,
            ACTIVATIONS,
        )
        object.__setattr__(self, "non_linearity", self.non_linearity.lower())
        _require(
            self.residual_before_ln in (True, False, "post_add"),
            f"residual_before_ln must be true, false or 'post_add', got {self.residual_before_ln!r}.",
        )
        _require(
            _is_number(self.scaling) or self.scaling in ("learned", "channel"),
            f"scaling must be a number, 'learned' or 'channel', got {self.scaling!r}.",
        )
        _require(
            _is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            f"dropout must be a number in [0, 1), got {self.dropout!r}.",
        )
        _check_choice("init_weights", self.init_weights, INIT_SCHEMES)
        object.__setattr__(self, "leave_out", layer_list("leave_out", self.leave_out))
        if _is_number(self.scaling):
            object.__setattr__(self, "scaling", float(self.scaling))

    @property
    def sites(self) -> tuple[str, ...]:
        """Where in each layer an adapter sits: ``"attn"``, ``"cross_attn"`` (decoder layers of encoder-decoder
        models) and/or ``"ffn"``."""
        chosen = (
            ("attn", self.after_attention),
            ("cross_attn", self.after_cross_attention),
            ("ffn", self.after_ffn),
        )
        return tuple(s for s, on in chosen if on)

    def reduction_factor_for(self, layer: int) -> float:
        if isinstance(self.reduction_factor, tuple):
            table = dict(self.reduction_factor)
            return float(table.get(str(layer), table["default"]))
        return float(self.reduction_factor)

    def bottleneck_width(self, hidden_size: int, layer: int) -> int:
        """``m`` for this layer; raises ConfigError if the bottleneck would have zero width."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        factor = self.reduction_factor_for(layer)
        width = int(hidden_size // factor)
        _require(
            width >= 1,
            f"reduction_factor {factor:g} on hidden size {hidden_size} gives a zero-width bottleneck "
            f"(layer {layer}); use a reduction factor of at most {hidden_size} or set bottleneck_size.",
        )
        return width


# ------------------------------------------------------------------------------------------------------ LoRA

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
        _require(
            isinstance(self.r, int) and not isinstance(self.r, bool) and self.r > 0,
            f"r must be a positive integer, got {self.r!r}.",
        )
        _require(
            _is_number(self.alpha) and self.alpha > 0, f"alpha must be a positive number, got {self.alpha!r}."
        )
        _require(
            _is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
            f"dropout must be a number in [0, 1), got {self.dropout!r}.",
        )
        _check_bool("use_rslora", self.use_rslora)
        _check_choice("init", self.init, LORA_INITS)
        object.__setattr__(self, "leave_out", layer_list("leave_out", self.leave_out))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "target_modules", module_names("target_modules", self.target_modules))
        saved = self.modules_to_save
        if saved is not None:
            saved = (saved,) if isinstance(saved, str) else saved
            _require(
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
                _require(
                    getattr(self, option) is None,
                    f"{option} selects modules by name: it needs target_modules (or use targets / leave_out).",
                )
            for option in ("rank_pattern", "alpha_pattern"):
                _require(
                    not getattr(self, option),
                    f"{option} sets values per module name: it needs target_modules.",
                )
            targets = ("q", "v") if self.targets is None else self.targets
            targets = (targets,) if isinstance(targets, str) else targets
            _require(
                isinstance(targets, (list, tuple)) and len(targets) > 0,
                f"targets must be a non-empty list of projections ({', '.join(LINEAR_POINTS)}), got "
                f"{self.targets!r}.",
            )
            for target in targets:
                _check_choice("targets", target, LINEAR_POINTS)
            object.__setattr__(self, "targets", tuple(dict.fromkeys(targets)))

    def _check_by_name(self) -> None:
        _require(
            not self.targets,
            f"targets={self.targets!r} and target_modules={self.target_modules!r} both choose where LoRA sits: "
            "name spec points with targets or modules with target_modules, not both.",
        )
        object.__setattr__(self, "targets", ())
        _require(
            not self.leave_out,
            "leave_out applies to targets; with target_modules choose layers with layers_to_transform.",
        )
        object.__setattr__(self, "exclude_modules", module_names("exclude_modules", self.exclude_modules))
        _require(
            self.exclude_modules != ALL_LINEAR,
            "exclude_modules='all-linear' would exclude every target; name the modules to leave out.",
        )
        layers = self.layers_to_transform
        if layers is not None:
            _require(
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
            _require(
                self.layers_to_transform is not None,
                "layers_pattern names the layer list for layers_to_transform: set layers_to_transform too.",
            )
            pattern = (pattern,) if isinstance(pattern, str) else pattern
            _require(
                isinstance(pattern, (list, tuple)) and all(isinstance(p, str) and p for p in pattern),
                f"layers_pattern must be a name or a list of names (e.g. 'layers'), got {self.layers_pattern!r}.",
            )
            object.__setattr__(self, "layers_pattern", tuple(pattern))

        def positive_int(name: str, value: Any) -> None:
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"{name} must be a positive integer rank, got {value!r}.",
            )

        def positive_number(name: str, value: Any) -> None:
            _require(_is_number(value) and value > 0, f"{name} must be a positive number, got {value!r}.")

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


# ---------------------------------------------------------------------------------------------------- presets

PRESETS: dict[str, Callable[[], MethodConfig]] = {
    "pfeiffer": lambda: BottleneckConfig(
        after_attention=False,
        after_ffn=True,
        original_ln_before=True,
        original_ln_after=True,
        residual_before_ln=True,
        non_linearity="relu",
        reduction_factor=16,
    ),
    "houlsby": lambda: BottleneckConfig(
        after_attention=True,
        after_ffn=True,
        original_ln_before=False,
        original_ln_after=True,
        residual_before_ln=True,
        non_linearity="swish",
        reduction_factor=16,
    ),
    "bapna_firat": lambda: BottleneckConfig(
        after_attention=False,
        after_ffn=True,
        original_ln_before=True,
        original_ln_after=False,
        residual_before_ln=False,
        ln_before=True,
        non_linearity="relu",
        reduction_factor=16,
    ),
}
PRESET_ALIASES = {
    "seq_bn": "pfeiffer",
    "double_seq_bn": "houlsby",
    "bapna": "bapna_firat",
    "bapna-firat": "bapna_firat",
}
PRESETS["lora"] = LoRAConfig
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {"bottleneck": BottleneckConfig, "lora": LoRAConfig}


def register_config(
    config_cls: type[MethodConfig], presets: Mapping[str, Callable[[], MethodConfig]] = {}
) -> None:
    """Make a method's config class (and its presets) known to ``resolve_config``."""
    METHOD_CONFIGS[config_cls.method] = config_cls
    PRESETS.update(presets)


def preset_names() -> list[str]:
    return sorted([*PRESETS, *PRESET_ALIASES])


def resolve_config(config: str | Mapping[str, Any] | MethodConfig | None) -> MethodConfig:
    """Turn a preset name (with optional ``[key=value,...]`` overrides), a dict or a config into a config."""
    if config is None:
        config = "pfeiffer"
    if isinstance(config, MethodConfig):
        return config
    if isinstance(config, Mapping):
        if "use_dora" in config and config.get("method") in ("lora", "dora"):  # peft's spelling of DoRA
            config = {k: v for k, v in config.items() if k != "use_dora"} | {
                "method": "dora" if _use_dora(config["use_dora"]) else "lora"
            }
        method = config.get("method", "bottleneck")
        if method not in METHOD_CONFIGS:
            raise ConfigError(
                f"Unknown method {method!r}{did_you_mean(str(method), METHOD_CONFIGS)}; "
                f"known methods: {', '.join(sorted(METHOD_CONFIGS))}."
            )
        return METHOD_CONFIGS[method].from_dict(config)
    if not isinstance(config, str):
        raise ConfigError(
            f"config must be a preset name, a dict or a config object, got {type(config).__name__}."
        )
    name, overrides = _parse_preset_string(config)
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise ConfigError(
            f"Unknown adapter config {name!r}{did_you_mean(name, preset_names())}. "
            f"Presets: {', '.join(preset_names())}; or pass a dict or a config object (BottleneckConfig, LoRAConfig, ...)."
        )
    base = PRESETS[key]()
    if "use_dora" in overrides:
        base = _switch_dora(base, _use_dora(overrides.pop("use_dora")), name)
    return base.replace(**overrides) if overrides else base


def _use_dora(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"use_dora must be true or false, got {value!r}.")
    return value


def _switch_dora(base: MethodConfig, use_dora: bool, name: str) -> MethodConfig:
    """``lora[use_dora=true]`` (peft's spelling) is the ``dora`` method with the same LoRA options; no field is
    added to LoRAConfig, so saved LoRA configs (and their hashes) are unchanged."""
    if base.method not in ("lora", "dora"):
        raise ConfigError(f"use_dora applies to LoRA presets; {name!r} is a {base.method} config.")
    target = "dora" if use_dora else "lora"
    if base.method == target:
        return base
    return METHOD_CONFIGS[target].from_dict({**base.to_dict(), "method": target})


def _parse_preset_string(text: str) -> tuple[str, dict[str, Any]]:
    text = text.strip()
    if "[" not in text:
        return text.lower(), {}
    if not text.endswith("]"):
        raise ConfigError(f"Malformed config string {text!r}: expected 'name[key=value,...]'.")
    name, body = text[: text.index("[")].strip().lower(), text[text.index("[") + 1 : -1]
    overrides: dict[str, Any] = {}
    for part in _split_top_level(body):
        if not part.strip():
            continue
        if "=" not in part:
            raise ConfigError(f"Malformed override {part!r} in {text!r}: expected key=value.")
        key, raw = (s.strip() for s in part.split("=", 1))
        overrides[key] = _parse_value(raw)
    return name, overrides


def _split_top_level(body: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in body:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _parse_value(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        if raw.startswith("[") and raw.endswith("]"):  # a list of bare words: [q,v]
            return [_parse_value(part.strip()) for part in _split_top_level(raw[1:-1]) if part.strip()]
        return raw.strip("'\"")

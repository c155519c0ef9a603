"""The configs known by method name and the presets known by name, and ``resolve_config``, which turns a preset
name (with optional ``[key=value,...]`` overrides), a dict or a config into a config.

``"pfeiffer"``, ``"houlsby[reduction_factor=64]"``, ``"pfeiffer[leave_out=[0,1],non_linearity=gelu]"``. Methods
defined outside the spec layer make their configs and presets known with ``register_config``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from adapterhub.errors import ConfigError, did_you_mean
from adapterhub.spec.configs.adalora import AdaLoraConfig
from adapterhub.spec.configs.base import MethodConfig
from adapterhub.spec.configs.bottleneck import BottleneckConfig
from adapterhub.spec.configs.ln_tuning import LNTuningConfig
from adapterhub.spec.configs.low_rank import LoRAConfig
from adapterhub.spec.configs.lycoris import LoHaConfig, LoKrConfig
from adapterhub.spec.configs.oft import BOFTConfig, OFTConfig
from adapterhub.spec.configs.preset_strings import parse_preset_string
from adapterhub.spec.configs.reft import REFT_PRESETS, ReftConfig
from adapterhub.spec.configs.vera import VeraConfig

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
PRESETS["loha"] = LoHaConfig
PRESETS["lokr"] = LoKrConfig
PRESETS["vera"] = VeraConfig
PRESETS["oft"] = OFTConfig
PRESETS["boft"] = BOFTConfig
PRESETS["ln_tuning"] = LNTuningConfig
PRESETS["adalora"] = AdaLoraConfig
PRESETS.update(REFT_PRESETS)
METHOD_CONFIGS: dict[str, type[MethodConfig]] = {
    "bottleneck": BottleneckConfig,
    "lora": LoRAConfig,
    "loha": LoHaConfig,
    "lokr": LoKrConfig,
    "vera": VeraConfig,
    "oft": OFTConfig,
    "boft": BOFTConfig,
    "ln_tuning": LNTuningConfig,
    "adalora": AdaLoraConfig,
    "reft": ReftConfig,
}


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
    name, overrides = parse_preset_string(config)
    key = PRESET_ALIASES.get(name, name)
    if key not in PRESETS:
        raise ConfigError(
            f"Unknown adapter config {name!r}{did_you_mean(name, preset_names())}. "
            f"Presets: {', '.join(preset_names())}; or pass a dict or a config object (BottleneckConfig, LoRAConfig, ...)."
        )
    base = PRESETS[key]()
    if "use_dora" in overrides and not _has_field(base, "use_dora"):  # VeRA has its own use_dora (DVoRA)
        base = _switch_dora(base, _use_dora(overrides.pop("use_dora")), name)
    return base.replace(**overrides) if overrides else base


def _has_field(config: MethodConfig, name: str) -> bool:
    return name in {f.name for f in fields(config)}


def _use_dora(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"use_dora must be true or false, got {value!r}.")
    return value


def _switch_dora(base: MethodConfig, use_dora: bool, name: str) -> MethodConfig:
    """``lora[use_dora=true]`` (peft's spelling) is the ``dora`` method with the same LoRA options; no field is
    added to LoRAConfig, so saved LoRA configs (and their hashes) are unchanged."""
    if base.method not in ("lora", "dora"):
        raise ConfigError(f"use_dora applies to LoRA and VeRA presets; {name!r} is a {base.method} config.")
    target = "dora" if use_dora else "lora"
    if base.method == target:
        return base
    return METHOD_CONFIGS[target].from_dict({**base.to_dict(), "method": target})

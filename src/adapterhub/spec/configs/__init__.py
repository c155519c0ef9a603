"""Adapter configurations: frozen, keyword-only dataclasses, validated on construction.

A config is data: it can be written as JSON (``to_dict``), read back (``from_dict``), hashed and compared. Unknown
keys and wrong types are rejected with a message that names the valid keys. Presets are addressed by name, with
optional overrides in brackets: ``"pfeiffer"``, ``"houlsby[reduction_factor=64]"``,
``"pfeiffer[leave_out=[0,1],non_linearity=gelu]"``.

The package's modules, one job each: ``base`` (``MethodConfig``, the canonical JSON and hash), ``checks`` (shared
validation), ``targeting`` (where low-rank methods attach), ``bottleneck``, ``low_rank``, ``lycoris``, ``vera``,
``oft``, ``ln_tuning``, ``adalora`` and ``reft`` (the configs of the method families defined in the spec layer),
``registry`` (configs by method name, presets, ``resolve_config``) and ``preset_strings`` (``name[key=value]``).
Every name is importable from ``adapterhub.spec.configs``.
"""

from adapterhub.spec.configs.adalora import AdaLoraConfig
from adapterhub.spec.configs.base import OMIT_DEFAULT, C, MethodConfig, canonical_json, sha256_hex
from adapterhub.spec.configs.bottleneck import ACTIVATIONS, INIT_SCHEMES, BottleneckConfig
from adapterhub.spec.configs.checks import layer_list
from adapterhub.spec.configs.ln_tuning import LNTuningConfig
from adapterhub.spec.configs.low_rank import LORA_INITS, LoRAConfig
from adapterhub.spec.configs.lycoris import LoHaConfig, LoKrConfig, LycorisConfig
from adapterhub.spec.configs.oft import BOFTConfig, OFTConfig
from adapterhub.spec.configs.reft import ReftConfig
from adapterhub.spec.configs.registry import (
    METHOD_CONFIGS,
    PRESET_ALIASES,
    PRESETS,
    preset_names,
    register_config,
    resolve_config,
)
from adapterhub.spec.configs.targeting import LINEAR_POINTS, ModuleTargeting
from adapterhub.spec.configs.vera import VeraConfig
from adapterhub.spec.module_names import ALL_LINEAR

__all__ = [
    "ACTIVATIONS",
    "ALL_LINEAR",
    "INIT_SCHEMES",
    "LINEAR_POINTS",
    "LORA_INITS",
    "METHOD_CONFIGS",
    "OMIT_DEFAULT",
    "PRESETS",
    "PRESET_ALIASES",
    "AdaLoraConfig",
    "BOFTConfig",
    "BottleneckConfig",
    "C",
    "LNTuningConfig",
    "LoHaConfig",
    "LoKrConfig",
    "LoRAConfig",
    "LycorisConfig",
    "MethodConfig",
    "ModuleTargeting",
    "OFTConfig",
    "ReftConfig",
    "VeraConfig",
    "canonical_json",
    "layer_list",
    "preset_names",
    "register_config",
    "resolve_config",
    "sha256_hex",
]

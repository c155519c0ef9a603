"""Adapter methods. Each method is one module registered with ``@register_method``; importing this package
registers the built-in ones."""

from adapterhub.methods.base import (
    METHODS,
    AdapterModule,
    ModelDims,
    SiteInputs,
    method_for_config,
    register_method,
)
from adapterhub.methods.bottleneck import BottleneckAdapter, BottleneckLayer
from adapterhub.methods.invertible import InvertibleBottleneckAdapter, InvertibleBottleneckConfig
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.methods.prefix_tuning import PrefixTuningAdapter, PrefixTuningConfig
from adapterhub.methods.prompt_tuning import PromptTuningAdapter, PromptTuningConfig

__all__ = [
    "METHODS",
    "AdapterModule",
    "BottleneckAdapter",
    "BottleneckLayer",
    "InvertibleBottleneckAdapter",
    "InvertibleBottleneckConfig",
    "LoRAAdapter",
    "LoRALayer",
    "ModelDims",
    "PrefixTuningAdapter",
    "PrefixTuningConfig",
    "PromptTuningAdapter",
    "PromptTuningConfig",
    "SiteInputs",
    "method_for_config",
    "register_method",
]

"""The methods layer: adapter methods. Each method is one module registered with ``@register_method``; importing
this package registers the built-in ones. ``base`` holds the method protocol every method implements. Modules here
may import the spec layer (``adapterhub.spec``) and ``adapterhub.errors``, nothing above (runtime, heads, ...)."""

from adapterhub.methods.adalora import AdaLoraAdapter, SVDLayer
from adapterhub.methods.base import (
    METHODS,
    AdapterModule,
    ModelDims,
    SiteInputs,
    StackDims,
    method_for_config,
    register_method,
)
from adapterhub.methods.boft import BOFTAdapter, BOFTLayer
from adapterhub.methods.bottleneck import BottleneckAdapter, BottleneckLayer
from adapterhub.methods.compacter import CompacterAdapter, CompacterConfig
from adapterhub.methods.dora import DoRAAdapter, DoRAConfig, DoRALayer
from adapterhub.methods.gating import GatedBottleneckConfig, GatedLoRAConfig, GatedPrefixTuningConfig
from adapterhub.methods.ia3 import IA3Adapter, IA3Config
from adapterhub.methods.invertible import InvertibleBottleneckAdapter, InvertibleBottleneckConfig
from adapterhub.methods.ln_tuning import LNTuningAdapter
from adapterhub.methods.loha import LoHaAdapter, LoHaLayer
from adapterhub.methods.lokr import LoKrAdapter, LoKrLayer
from adapterhub.methods.lora import LoRAAdapter, LoRALayer
from adapterhub.methods.oft import OFTAdapter, OFTLayer
from adapterhub.methods.parallel_adapter import ParallelAdapter, ParallelConfig
from adapterhub.methods.prefix_tuning import PrefixTuningAdapter, PrefixTuningConfig
from adapterhub.methods.prompt_tuning import PromptTuningAdapter, PromptTuningConfig
from adapterhub.methods.reft import ReftAdapter
from adapterhub.methods.union import MethodUnion, UnionAdapter
from adapterhub.methods.vera import VeraAdapter, VeraLayer

__all__ = [
    "METHODS",
    "AdaLoraAdapter",
    "AdapterModule",
    "BOFTAdapter",
    "BOFTLayer",
    "BottleneckAdapter",
    "BottleneckLayer",
    "CompacterAdapter",
    "CompacterConfig",
    "DoRAAdapter",
    "DoRAConfig",
    "DoRALayer",
    "GatedBottleneckConfig",
    "GatedLoRAConfig",
    "GatedPrefixTuningConfig",
    "IA3Adapter",
    "IA3Config",
    "InvertibleBottleneckAdapter",
    "InvertibleBottleneckConfig",
    "LNTuningAdapter",
    "LoHaAdapter",
    "LoHaLayer",
    "LoKrAdapter",
    "LoKrLayer",
    "LoRAAdapter",
    "LoRALayer",
    "MethodUnion",
    "ModelDims",
    "OFTAdapter",
    "OFTLayer",
    "ParallelAdapter",
    "ParallelConfig",
    "PrefixTuningAdapter",
    "PrefixTuningConfig",
    "PromptTuningAdapter",
    "PromptTuningConfig",
    "ReftAdapter",
    "SVDLayer",
    "SiteInputs",
    "StackDims",
    "UnionAdapter",
    "VeraAdapter",
    "VeraLayer",
    "method_for_config",
    "register_method",
]

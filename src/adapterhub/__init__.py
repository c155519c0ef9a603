"""adapterhub: adapters for HuggingFace transformers models.

import adapterhub
adapterhub.init(model)
model.add_adapter("sst-2", config="pfeiffer")
model.train_adapter("sst-2")
adapterhub.deinit(model)  # remove the adapter API again

Importing the package is light: its names are imported on first use (PEP 562), so the CLI, the hub client and the
hub server start without torch or transformers. ``from adapterhub import init`` works as before and imports the
model code (torch, transformers) then; ``Stack``, ``BottleneckConfig`` and the errors need neither.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from adapterhub.version import __version__ as __version__

if TYPE_CHECKING:
    from adapterhub.api.kbit import prepare_kbit_training
    from adapterhub.api.model import deinit, init
    from adapterhub.data.packaged import packaged_decoder_path, packaged_encoder_path
    from adapterhub.errors import (
        AdapterExistsError,
        AdapterFileError,
        AdapterHubError,
        AdapterNotFoundError,
        ConfigError,
        IncompatibleModelError,
        UnsupportedArchitectureError,
    )
    from adapterhub.export.onnx import export_onnx
    from adapterhub.heads.contrastive import clip_contrastive_loss, zero_shot_classify
    from adapterhub.methods.union import MethodUnion
    from adapterhub.runtime.fusion import FusionConfig, plot_fusion_heatmap
    from adapterhub.spec.architectures import (
        ArchitectureSpec,
        InputRef,
        LinearSpec,
        SiteSpec,
        StackSpec,
        register_architecture,
    )
    from adapterhub.spec.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack, nesting_table
    from adapterhub.spec.configs import (
        BOFTConfig,
        BottleneckConfig,
        LoHaConfig,
        LoKrConfig,
        LoRAConfig,
        MethodConfig,
        OFTConfig,
        VeraConfig,
        resolve_config,
    )

# name -> module that defines it, imported on first use. fusion, methods.union and model import torch and
# transformers; the others are light but still wait, so that ``import adapterhub.cli`` loads only what it uses.
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ("Average", "BatchSplit", "Fuse", "Parallel", "Split", "Stack"), "adapterhub.spec.composition"
    ),
    **dict.fromkeys(
        (
            "BOFTConfig",
            "BottleneckConfig",
            "LoHaConfig",
            "LoKrConfig",
            "LoRAConfig",
            "MethodConfig",
            "OFTConfig",
            "VeraConfig",
            "resolve_config",
        ),
        "adapterhub.spec.configs",
    ),
    **dict.fromkeys(
        (
            "AdapterExistsError",
            "AdapterFileError",
            "AdapterHubError",
            "AdapterNotFoundError",
            "ConfigError",
            "IncompatibleModelError",
            "UnsupportedArchitectureError",
        ),
        "adapterhub.errors",
    ),
    **dict.fromkeys(
        ("ArchitectureSpec", "InputRef", "LinearSpec", "SiteSpec", "StackSpec", "register_architecture"),
        "adapterhub.spec.architectures",
    ),
    "FusionConfig": "adapterhub.runtime.fusion",
    "clip_contrastive_loss": "adapterhub.heads.contrastive",
    "zero_shot_classify": "adapterhub.heads.contrastive",
    "nesting_table": "adapterhub.spec.composition",
    "packaged_decoder_path": "adapterhub.data.packaged",
    "packaged_encoder_path": "adapterhub.data.packaged",
    "plot_fusion_heatmap": "adapterhub.runtime.fusion",
    "MethodUnion": "adapterhub.methods.union",
    "deinit": "adapterhub.api.model",
    "export_onnx": "adapterhub.export.onnx",
    "init": "adapterhub.api.model",
    "prepare_kbit_training": "adapterhub.api.kbit",
}
__all__ = [
    "AdapterExistsError",
    "AdapterFileError",
    "AdapterHubError",
    "AdapterNotFoundError",
    "ArchitectureSpec",
    "Average",
    "BOFTConfig",
    "BatchSplit",
    "BottleneckConfig",
    "ConfigError",
    "Fuse",
    "FusionConfig",
    "IncompatibleModelError",
    "InputRef",
    "LinearSpec",
    "LoHaConfig",
    "LoKrConfig",
    "LoRAConfig",
    "MethodConfig",
    "MethodUnion",
    "OFTConfig",
    "Parallel",
    "SiteSpec",
    "Split",
    "Stack",
    "StackSpec",
    "UnsupportedArchitectureError",
    "VeraConfig",
    "clip_contrastive_loss",
    "deinit",
    "export_onnx",
    "init",
    "nesting_table",
    "packaged_decoder_path",
    "packaged_encoder_path",
    "plot_fusion_heatmap",
    "prepare_kbit_training",
    "register_architecture",
    "resolve_config",
    "zero_shot_classify",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterhub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""adapterhub: adapters for HuggingFace transformers models.

import adapterhub
adapterhub.init(model)
model.add_adapter("sst-2", config="pfeiffer")
model.train_adapter("sst-2")
adapterhub.deinit(model)  # remove the adapter API again
"""

__version__ = "0.1.0"

from adapterhub.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack
from adapterhub.configs import BottleneckConfig, LoRAConfig, MethodConfig, resolve_config
from adapterhub.errors import (
    AdapterExistsError,
    AdapterFileError,
    AdapterHubError,
    AdapterNotFoundError,
    ConfigError,
    IncompatibleModelError,
    UnsupportedArchitectureError,
)
from adapterhub.fusion import FusionConfig
from adapterhub.methods.union import MethodUnion
from adapterhub.model import deinit, init

# loaded on first use (PEP 562): name -> module
_LAZY = {"export_onnx": "adapterhub.export.onnx"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adapterhub' has no attribute {name!r}")


__all__ = [
    "AdapterExistsError",
    "AdapterFileError",
    "AdapterHubError",
    "AdapterNotFoundError",
    "Average",
    "BatchSplit",
    "BottleneckConfig",
    "ConfigError",
    "Fuse",
    "FusionConfig",
    "IncompatibleModelError",
    "LoRAConfig",
    "MethodConfig",
    "MethodUnion",
    "Parallel",
    "Split",
    "Stack",
    "UnsupportedArchitectureError",
    "__version__",
    "deinit",
    "export_onnx",
    "init",
    "resolve_config",
]

"""adapterhub: adapters for HuggingFace transformers models.

import adapterhub
adapterhub.init(model)
model.add_adapter("sst-2", config="pfeiffer")
model.train_adapter("sst-2")
"""

__version__ = "0.1.0"

from adapterhub.composition import Stack
from adapterhub.configs import BottleneckConfig, MethodConfig, resolve_config
from adapterhub.errors import (
    AdapterExistsError,
    AdapterFileError,
    AdapterHubError,
    AdapterNotFoundError,
    ConfigError,
    IncompatibleModelError,
    UnsupportedArchitectureError,
)
from adapterhub.model import init

__all__ = [
    "AdapterExistsError",
    "AdapterFileError",
    "AdapterHubError",
    "AdapterNotFoundError",
    "BottleneckConfig",
    "ConfigError",
    "IncompatibleModelError",
    "MethodConfig",
    "Stack",
    "UnsupportedArchitectureError",
    "__version__",
    "init",
    "resolve_config",
]

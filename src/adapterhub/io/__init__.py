"""The io layer: on-disk formats, ours (JSON + safetensors), the `adapters` library's and peft's (docs/FORMAT.md,
docs/compat.md), and validating a saved adapter without a model (``manifest``). It may import spec, methods, runtime
(the in-memory ``AdapterRecord`` is ``adapterhub.runtime.records``) and heads, never hub, api or above."""

from adapterhub.io.files import read_json, read_tensors, write_json, write_tensors
from adapterhub.runtime.records import AdapterRecord, HeadRecord, ModelInfo

__all__ = [
    "AdapterRecord",
    "HeadRecord",
    "ModelInfo",
    "read_json",
    "read_tensors",
    "write_json",
    "write_tensors",
]

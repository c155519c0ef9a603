"""On-disk formats: ours (JSON + safetensors) and the `adapters` library's. See docs/FORMAT.md."""

from adapterhub.io.files import read_json, read_tensors, write_json, write_tensors
from adapterhub.io.records import AdapterRecord, HeadRecord, ModelInfo

__all__ = [
    "AdapterRecord",
    "HeadRecord",
    "ModelInfo",
    "read_json",
    "read_tensors",
    "write_json",
    "write_tensors",
]

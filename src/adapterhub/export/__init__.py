"""Export a model with its active adapter setup and head for deployment: ONNX (``export_onnx``, checked with
onnxruntime) and ``torch.export`` (``export_program``). See docs/export.md.

The names below are loaded on first use (PEP 562), so importing this package (e.g. for its CLI module) does not
import torch. The export layer may import api and below (not hub, data, training or serving).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "NotExportableError": "adapterhub.export.graph",
    "Traced": "adapterhub.export.graph",
    "export_program": "adapterhub.export.graph",
    "ExportMismatchError": "adapterhub.export.onnx",
    "OnnxExport": "adapterhub.export.onnx",
    "SpeedComparison": "adapterhub.export.onnx",
    "compare_outputs": "adapterhub.export.onnx",
    "compare_speed": "adapterhub.export.onnx",
    "export_onnx": "adapterhub.export.onnx",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adapterhub.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

"""peft AdaLoRA files (``"peft_type": "ADALORA"``), read and written as our ``adalora`` targeted by module name.

peft's weights sit on the adapted modules: ``base_model.model.<path>.lora_A`` ``(k, d_in)``, ``lora_B``
``(d_out, k)``, ``lora_E`` ``(k, 1)``, where ``k`` is the number of singular values ``rank_pattern`` keeps for that
module (``init_r`` without a pattern): peft drops the masked rows when it saves and rebuilds each module at rank
``k`` when it loads, keeping ``ranknum = init_r`` (so the scale stays ``lora_alpha / init_r``). ``rank_pattern``'s
keys are ``<path>.lora_E``, its values ``init_r`` booleans.

Reading: the kept rows go back to their places in ``init_r`` rows (the dropped ones zero: with ``E = 0`` they add
nothing, so outputs are peft's); each tensor becomes ``by_name.<path with ":">.<param>``, ``target_modules`` the
paths found, ``rank_pattern`` ``{path: mask}``; ``lora_alpha <= 0`` (peft then scales by ``init_r``) becomes
``alpha = init_r``. Tensors of no adapted module are ``modules_to_save`` copies (or a static head), as for LoRA.

Writing: each target under its module path (spec points through the spec's module names; slices of a fused
projection have no peft form and are refused), only the rows ``rank_pattern`` keeps, and ``rank_pattern`` under
peft's keys. peft requires a ``total_step``: an adapter that never trained has none, and gets the shortest schedule
its ``tinit`` / ``tfinal`` allow (``tinit + tfinal + 1``; only peft's allocator reads it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.io.peft_common import (
    PREFIX,
    add_saved_tensors,
    by_name_targets,
    module_tensors,
    module_weights,
    peft_meta,
    point_paths,
    write_peft_files,
)
from adapterhub.io.peft_keys import check_adalora_keys
from adapterhub.io.peft_layout import parts_reader
from adapterhub.runtime.records import AdapterRecord
from adapterhub.spec.architectures import ArchitectureSpec

_WEIGHT = re.compile(r"^(?P<path>.+)\.(?P<param>lora_[ABE])$")
_POINT = re.compile(r"^layers\.(\d+)\.([a-z_]+)$")
# peft's AdaLoraConfig options -> ours, with peft's defaults
_OPTIONS: dict[str, tuple[str, Any]] = {
    "lora_dropout": ("dropout", 0.0),
    "init_r": ("init_r", 12),
    "target_r": ("target_r", 8),
    "tinit": ("tinit", 0),
    "tfinal": ("tfinal", 0),
    "deltaT": ("deltaT", 1),
    "beta1": ("beta1", 0.85),
    "beta2": ("beta2", 0.85),
    "orth_reg_weight": ("orth_reg_weight", 0.5),
    "total_step": ("total_step", None),
}


def read_peft_adalora(
    meta: Mapping[str, Any], raw: Mapping[str, torch.Tensor], directory: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(config, tensors, head tensors)`` of a peft AdaLoRA directory, targeted by module name."""
    config: dict[str, Any] = {"method": "adalora"}
    for key, (ours, default) in _OPTIONS.items():
        config[ours] = meta[key] if meta.get(key) is not None else default
    init_r = int(config["init_r"])
    alpha = meta.get("lora_alpha", 8)
    config["alpha"] = float(alpha) if alpha > 0 else float(init_r)  # peft: scaling = lora_alpha or r
    pattern = {
        _pattern_path(key): tuple(bool(v) for v in mask)
        for key, mask in (meta.get("rank_pattern") or {}).items()
    }
    tensors: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    weights, head = module_weights(raw, _WEIGHT, directory)  # head: modules_to_save
    for key, path, param, tensor in weights:
        mask = pattern.get(path)
        tensors[f"by_name.{path.replace('.', ':')}.{param}"] = _expand(key, tensor, param, mask, init_r)
        paths.add(path)
    if not paths:
        raise AdapterFileError(f"{directory} holds no AdaLoRA weights (lora_A / lora_B / lora_E).")
    unknown = sorted(set(pattern) - paths)
    if unknown:
        raise AdapterFileError(
            f"The peft AdaLoRA adapter in {directory} has a rank_pattern for {unknown}, which hold no weights."
        )
    config["target_modules"] = sorted(paths)
    if pattern:
        config["rank_pattern"] = {path: list(mask) for path, mask in pattern.items()}
    return config, tensors, head


def _pattern_path(key: str) -> str:
    """The module path of a ``rank_pattern`` key (``<path>.lora_E``, or ``<path>.lora_E.<adapter>`` as peft keeps
    it in memory)."""
    parts = key.split(".")
    cut = parts.index("lora_E") if "lora_E" in parts else len(parts)
    return ".".join(parts[:cut])


def _expand(
    key: str, tensor: torch.Tensor, param: str, mask: tuple[bool, ...] | None, init_r: int
) -> torch.Tensor:
    """A saved factor with the kept rows (``lora_B``: columns) put back in their places among ``init_r``."""
    axis = 1 if param == "lora_B" else 0
    if mask is None:
        if tensor.shape[axis] != init_r:
            raise AdapterFileError(
                f"peft weight {key!r} has rank {tensor.shape[axis]}, but init_r is {init_r} and rank_pattern names "
                "no mask for its module."
            )
        return tensor
    if len(mask) != init_r or sum(mask) != tensor.shape[axis]:
        raise AdapterFileError(
            f"peft weight {key!r} has rank {tensor.shape[axis]}, but its rank_pattern keeps {sum(mask)} of "
            f"{len(mask)} singular values (init_r {init_r})."
        )
    shape = list(tensor.shape)
    shape[axis] = init_r
    out = torch.zeros(shape, dtype=tensor.dtype)
    keep = torch.tensor(mask)
    if axis == 0:
        out[keep] = tensor
    else:
        out[:, keep] = tensor
    return out


def write_peft_adalora(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write an AdaLoRA record in peft's layout (``PeftModel.from_pretrained`` computes what we do)."""
    config = record.config
    points = point_paths(model, spec)
    pattern: dict[str, list[bool]] = {}
    for key, mask in (config.get("rank_pattern") or {}).items():
        match = _POINT.match(key)
        path = points.get((int(match.group(1)), match.group(2))) if match else key
        pattern[path or key] = list(mask)

    def no_form(key: str) -> str:
        return (
            f"Adapter {record.name!r} has AdaLoRA on a slice of a fused projection ({key!r}); peft puts one "
            "AdaLoRA on a whole module, so this adapter has no peft form. Target the module by name "
            "(target_modules) or use layout='adapterhub'."
        )

    out: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    transposed = False
    for path, param, tensor in module_tensors(record, spec, model, no_form):
        module = model.get_submodule(path)
        is_conv1d = type(module).__name__ == "Conv1D"
        if not (isinstance(module, nn.Linear) or is_conv1d):
            raise ConfigError(
                f"Adapter {record.name!r} adapts {path!r}, a {type(module).__name__}; peft's AdaLoRA here is "
                "written for nn.Linear and Conv1D only. Use layout='adapterhub'."
            )
        transposed = transposed or is_conv1d
        if path in pattern:  # peft's files hold the kept singular values only
            keep = torch.tensor(pattern[path])
            tensor = tensor[:, keep] if param == "lora_B" else tensor[keep]
        out[f"{PREFIX}{path}.{param}"] = tensor.detach().contiguous()
        paths.add(path)
    modules_to_save = add_saved_tensors(record, out)
    total_step = config.get("total_step")
    if total_step is None:  # never trained: the shortest schedule peft accepts (only its allocator reads it)
        total_step = int(config.get("tinit", 0)) + int(config.get("tfinal", 0)) + 1
    fields: dict[str, Any] = {
        "r": 8,  # unused by AdaLoRA (peft's default, which it does not warn about)
        "lora_alpha": config.get("alpha", 8.0),
        **{key: config.get(ours, default) for key, (ours, default) in _OPTIONS.items()},
        "total_step": total_step,
        "rank_pattern": {f"{path}.lora_E": mask for path, mask in pattern.items()} or None,
        **by_name_targets(paths, exclude=False),
        "fan_in_fan_out": transposed,
        "bias": "none",
        "modules_to_save": modules_to_save,
    }
    return write_peft_files(directory, out, peft_meta("ADALORA", record, fields))


read_adalora = parts_reader(
    check_adalora_keys, lambda meta, raw, directory, spec, model: read_peft_adalora(meta, raw, directory)
)

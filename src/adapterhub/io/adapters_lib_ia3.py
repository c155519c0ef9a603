"""(IA)³ in the `adapters` library's layout (1.x): its ``IA3Config`` is a LoRA config with
``composition_mode="scale"``, ``r=1``; map it to our ``IA3Config`` and back.

Its module on a projection holds only ``lora_B`` ``(d_out, 1)`` and computes ``output * (lora_B · alpha)``
(``adapters.methods.lora.IA3.com``): an output scaling, so their vector · alpha is our ``layers.<i>.out_<point>``;
it never scales inputs (``input_targets=[]``). Weights: ``<layers>.<i>.<module path>.loras.<name>.lora_B``; the
points follow from the module paths in ``ArchitectureSpec.linears`` (k, v and its ``intermediate_lora`` location:
``ffn_in`` on BERT/GPT-2, ``ffn_out`` on Llama). On GPT-2's fused ``c_attn`` the vector holds the enabled ones of
q, k, v in that order (``n·H`` rows). The disabled blocks are padded with ones *before* the ``alpha`` factor, so with
``alpha != 1`` that library scales them by ``alpha``: we read such a block as a constant vector ``alpha`` (so e.g.
their GPT-2 ``attn_matrices=[k, v], alpha=2`` reads as targets q, k, v). Writing puts ``alpha=1`` and our vectors as
``lora_B``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.io.adapters_lib_lora import check_their_targets
from adapterhub.spec.architectures import ArchitectureSpec

_THEIR_DEFAULTS: dict[str, Any] = {
    "architecture": "lora",
    "composition_mode": "scale",
    "dropout": 0.0,
    "dtype": None,
    "init_weights": "ia3",
    "init_weights_seed": None,
    "r": 1,
    "use_dora": False,
    "use_gating": False,
    "vera_b": None,
    "vera_d": None,
}
_REFUSED: dict[str, Any] = {"use_gating": False, "use_dora": False, "vera_d": None, "vera_b": None}


def is_ia3(theirs: Mapping[str, Any]) -> bool:
    return theirs.get("architecture") == "lora" and theirs.get("composition_mode") == "scale"


def _fused(spec: ArchitectureSpec) -> dict[str, list[str]]:
    by_module: dict[str, list[str]] = {}
    for point in spec.linears:
        by_module.setdefault(spec.adapters_lib_module(point), []).append(point)
    return {
        module: sorted(points, key=lambda p: spec.linears[p].part or (0, 1))
        for module, points in by_module.items()
        if len(points) > 1
    }


def read_ia3(
    theirs: Mapping[str, Any], raw: Mapping[str, torch.Tensor], spec: ArchitectureSpec, name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Their (IA)³ config and weights -> our config dict and tensors (``layers.<i>.out_<point>``)."""
    for key, default in _REFUSED.items():
        if theirs.get(key, default) not in (default, None):
            raise ConfigError(
                f"The (IA)³ adapter uses the `adapters` option {key}={theirs[key]!r}, which adapterhub does not "
                "support."
            )
    if int(theirs.get("r", 1)) != 1:
        raise ConfigError(f"composition_mode='scale' needs r=1; the adapter says r={theirs['r']!r}.")
    alpha = float(theirs.get("alpha", 1))
    point_of = {
        spec.adapters_lib_module(point): point
        for point, linear in spec.linears.items()
        if linear.part is None
    }
    fused = _fused(spec)
    enabled_qkv = [m for m in ("q", "k", "v") if m in theirs.get("attn_matrices", [])]
    modules = "|".join(re.escape(m) for m in {spec.adapters_lib_module(point) for point in spec.linears})
    pattern = re.compile(
        rf"^(?:.*\.)?{re.escape(spec.adapters_lib_layers)}\.(\d+)\.({modules})\.loras\.{re.escape(name)}\.lora_B$"
    )
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        match = pattern.match(key)
        if match is None:
            raise AdapterFileError(
                f"Weight {key!r} does not match the {spec.model_types[0]} (IA)³ layout of the `adapters` library "
                f"for adapter {name!r} (expected <layer>.<module>.loras.{name}.lora_B)."
            )
        layer, module = match.groups()
        vector = tensor.reshape(-1) * alpha
        if module in fused:
            points = [p for p in fused[module] if p in enabled_qkv]
            if not points or vector.shape[0] % len(points):
                raise AdapterFileError(
                    f"Weight {key!r} has {vector.shape[0]} entries; expected an equal block for each of "
                    f"{points or enabled_qkv} (option attn_matrices)."
                )
            width = vector.shape[0] // len(points)
            for j, point in enumerate(points):
                tensors[f"layers.{layer}.out_{point}"] = vector[j * width : (j + 1) * width].clone()
            if alpha != 1:  # their padding of the disabled blocks is multiplied by alpha too
                for point in fused[module]:
                    if point not in points:
                        tensors[f"layers.{layer}.out_{point}"] = torch.full(
                            (width,), alpha, dtype=vector.dtype
                        )
        else:
            tensors[f"layers.{layer}.out_{point_of[module]}"] = vector.clone()
    if not tensors:
        raise AdapterFileError(f"The (IA)³ adapter {name!r} has no weights.")
    targets = sorted({key.split(".")[2][len("out_") :] for key in tensors}, key=list(spec.linears).index)
    ours: dict[str, Any] = {
        "method": "ia3",
        "targets": targets,
        "input_targets": [],
        "leave_out": [int(i) for i in theirs.get("leave_out", [])],
    }
    return ours, tensors


def ia3_config_to_theirs(ours: Mapping[str, Any], spec: ArchitectureSpec) -> dict[str, Any]:
    """Our (IA)³ config -> their ``IA3Config`` dict; refuses what that library cannot express."""
    if ours.get("input_targets"):
        raise ConfigError(
            f"(IA)³ with input_targets={list(ours['input_targets'])} cannot be written in the `adapters` layout: "
            "that library scales projection outputs only. Use input_targets=[] (or layout='peft' / 'adapterhub')."
        )
    targets = list(ours["targets"])
    check_their_targets(targets, spec, "(IA)³")
    return {
        **_THEIR_DEFAULTS,
        "alpha": 1,
        "attn_matrices": [t for t in ("q", "k", "v") if t in targets],
        "intermediate_lora": spec.adapters_lib_lora["intermediate"] in targets,
        "leave_out": list(ours.get("leave_out", [])),
        "output_lora": spec.adapters_lib_lora["output"] in targets,
        "selfattn_lora": any(t in ("q", "k", "v") for t in targets),
    }


def write_ia3(
    tensors: Mapping[str, torch.Tensor], spec: ArchitectureSpec, name: str, prefix: str
) -> dict[str, torch.Tensor]:
    """Our vectors -> their ``lora_B`` ``(d_out, 1)`` (fused projections: the enabled blocks in q, k, v order)."""
    grouped: dict[tuple[str, str], list[tuple[int, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        _, layer, param = key.split(".")
        if not param.startswith("out_"):
            raise ConfigError(f"(IA)³ input scaling ({key!r}) has no form in the `adapters` layout.")
        linear = spec.linears[param[len("out_") :]]
        order = linear.part[0] if linear.part is not None else 0
        grouped.setdefault((layer, spec.adapters_lib_module(param[len("out_") :])), []).append(
            (order, tensor.detach())
        )
    out: dict[str, torch.Tensor] = {}
    for (layer, module), parts in grouped.items():
        path = f"{spec.adapters_lib_layers}.{layer}.{module}.loras.{name}.lora_B"
        full = f"{prefix}.{path}" if prefix else path
        vector = torch.cat([t for _, t in sorted(parts, key=lambda item: item[0])], dim=0)
        out[full] = vector.reshape(-1, 1).contiguous()
    return out

"""LoRA in the `adapters` library's layout (1.x): map its config and weight names to ours and back.

Its weights sit on the projection modules, ``<prefix>.<layers>.<i>.<module path>.loras.<name>.lora_A`` ``(r, d_in)``
and ``lora_B`` ``(d_out, r)``; we find the point by the module path in the model's ``ArchitectureSpec.linears``.
GPT-2's fused ``c_attn`` holds the enabled ones of q, k, v (in that order) block-diagonally: ``lora_A`` is
``(n·r, d_in)`` and ``lora_B`` ``(n·H, r)``, rows ``[j·r, (j+1)·r)`` of A pairing with rows ``[j·H, (j+1)·H)`` of B.
Its config says ``attn_matrices`` (q, k, v), ``intermediate_lora`` and ``output_lora`` (mapped per architecture
by ``ArchitectureSpec.adapters_lib_lora``); gating, DoRA, VeRA and ``composition_mode="scale"`` are refused.

On an encoder-decoder whose two stacks that library names per stack (Whisper), its ``attn_matrices`` LoRA sits on
every attention, the decoder's cross-attention included: those weights are our ``cross_q`` / ``cross_k`` /
``cross_v`` points (the decoder stack's ``linears``). Writing, a cross point cannot be expressed without its self
point, and a self point without its cross point is written with zero ``lora_A`` and ``lora_B`` on the
cross-attention (``zero_cross``), so that library, which always puts both there, adds nothing there.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.spec.architectures import ArchitectureSpec

_REFUSED: dict[str, Any] = {"use_gating": False, "use_dora": False, "vera_d": None, "vera_b": None}
_THEIR_DEFAULTS: dict[str, Any] = {
    "architecture": "lora",
    "composition_mode": "add",
    "dtype": None,
    "init_weights_seed": None,
    "use_dora": False,
    "use_gating": False,
    "vera_b": None,
    "vera_d": None,
}


_CROSS = {"q": "cross_q", "k": "cross_k", "v": "cross_v"}


def _linear_modules(spec: ArchitectureSpec) -> dict[str, str]:
    """Point -> its module path in that library's models, over every layer stack (the decoder's ``cross_*`` too)."""
    out: dict[str, str] = {}
    for stack in spec.stacks():
        for point, linear in stack.linears.items():
            out.setdefault(point, spec.adapters_lib_linears.get(point) or linear.module)
    return out


def _cross_points(spec: ArchitectureSpec) -> dict[str, str]:
    """q/k/v -> the decoder's cross point that library's ``attn_matrices`` also covers (Whisper); empty elsewhere."""
    if spec.decoder is None or not spec.decoder.adapters_lib_layers:
        return {}
    return {m: c for m, c in _CROSS.items() if c in spec.decoder.linears}


def _fused(spec: ArchitectureSpec) -> dict[str, list[str]]:
    """Module path -> the points it holds, for fused projections (several points on one module)."""
    by_module: dict[str, list[str]] = {}
    for point in spec.linears:
        by_module.setdefault(spec.adapters_lib_module(point), []).append(point)
    return {module: points for module, points in by_module.items() if len(points) > 1}


def read_lora(
    theirs: Mapping[str, Any], raw: Mapping[str, torch.Tensor], spec: ArchitectureSpec, name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Their LoRA config and weights -> our config dict and tensors (``layers.<i>.<point>.lora_A``)."""
    for key, default in _REFUSED.items():
        if theirs.get(key, default) not in (default, None):
            raise ConfigError(
                f"The LoRA adapter uses the `adapters` option {key}={theirs[key]!r}, which adapterhub does not support."
            )
    if theirs.get("composition_mode", "add") != "add":
        raise ConfigError(
            f"The adapter uses composition_mode={theirs['composition_mode']!r} ((IA)³-style scaling); adapterhub "
            "reads additive LoRA from that library."
        )
    module_of = _linear_modules(spec)
    point_of = {
        module: point
        for point, module in module_of.items()
        if point not in spec.linears or spec.linears[point].part is None
    }
    fused = _fused(spec)
    enabled_qkv = [m for m in ("q", "k", "v") if m in theirs.get("attn_matrices", [])]
    modules = "|".join(re.escape(m) for m in set(module_of.values()))
    pattern = re.compile(
        rf"^(?:.*\.)?{re.escape(spec.adapters_lib_layers)}\.(\d+)\.({modules})\.loras\.{re.escape(name)}\.lora_([AB])$"
    )
    r = int(theirs.get("r", 8))
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        match = pattern.match(key)
        if match is None:
            raise AdapterFileError(
                f"Weight {key!r} does not match the {spec.model_types[0]} LoRA layout of the `adapters` library for "
                f"adapter {name!r}."
            )
        layer, module, which = match.groups()
        if module in fused:
            points = [p for p in fused[module] if p in enabled_qkv]
            rows = r if which == "A" else tensor.shape[0] // max(len(points), 1)
            if tensor.shape[0] != rows * len(points):
                raise AdapterFileError(
                    f"Weight {key!r} has {tensor.shape[0]} rows; expected {rows} per matrix of {points}."
                )
            for j, point in enumerate(points):
                tensors[f"layers.{layer}.{point}.lora_{which}"] = tensor[j * rows : (j + 1) * rows].clone()
        else:
            tensors[f"layers.{layer}.{point_of[module]}.lora_{which}"] = tensor
    targets = sorted({key.split(".")[2] for key in tensors}, key=list(module_of).index)
    ours: dict[str, Any] = {
        "method": "lora",
        "r": r,
        "alpha": theirs.get("alpha", 8),
        "dropout": theirs.get("dropout", 0.0),
        "targets": targets,
        "leave_out": [int(i) for i in theirs.get("leave_out", [])],
    }
    if theirs.get("init_weights") == "lora":
        ours["init"] = "lora"
    return ours, tensors


def check_their_targets(targets: list[str], spec: ArchitectureSpec, what: str) -> None:
    """Refuse targets the `adapters` library's LoRA locations cannot hold (it has q, k, v and its per-architecture
    "intermediate" / "output" projections); ``what`` names the method in the message."""
    location = {point: where for where, point in spec.adapters_lib_lora.items()}
    cross = _cross_points(spec)
    alone = [c for m, c in cross.items() if c in targets and m not in targets]
    if alone:
        raise ConfigError(
            f"{what} on {alone} without {[m for m, c in cross.items() if c in alone]} cannot be written in the "
            f"`adapters` layout: on {spec.model_types[0]} its attn_matrices cover self- and cross-attention alike."
        )
    refused = [t for t in targets if t not in ("q", "k", "v", *cross.values()) and t not in location]
    if refused:
        raise ConfigError(
            f"{what} on {refused} cannot be written in the `adapters` layout: on {spec.model_types[0]} it covers "
            f"q, k, v and {', '.join(f'{p} ({w})' for p, w in location.items())} only."
        )


def lora_config_to_theirs(ours: Mapping[str, Any], spec: ArchitectureSpec) -> dict[str, Any]:
    """Our LoRA config -> theirs; refuses what that library cannot express."""
    if ours.get("use_rslora"):
        raise ConfigError(
            "use_rslora has no equivalent in the `adapters` layout (it scales by alpha / r only)."
        )
    targets = list(ours["targets"])
    check_their_targets(targets, spec, "LoRA")
    return {
        **_THEIR_DEFAULTS,
        "alpha": ours["alpha"],
        "attn_matrices": [t for t in ("q", "k", "v") if t in targets],
        "dropout": ours["dropout"],
        "init_weights": "lora" if ours.get("init", "lora") == "lora" else "bert",
        "intermediate_lora": location_points(spec, "intermediate") in targets,
        "leave_out": list(ours.get("leave_out", [])),
        "output_lora": location_points(spec, "output") in targets,
        "r": ours["r"],
        "selfattn_lora": any(t in ("q", "k", "v") for t in targets),
    }


def location_points(spec: ArchitectureSpec, where: str) -> str:
    return spec.adapters_lib_lora[where]


def zero_cross(
    tensors: Mapping[str, torch.Tensor], spec: ArchitectureSpec, first_len: int
) -> dict[str, torch.Tensor]:
    """Add zero ``lora_A`` / ``lora_B`` for each decoder layer (index ``>= first_len``) that has a q/k/v LoRA but not
    the cross-attention one that library's ``attn_matrices`` also creates there (the cross projection has the same
    shape on Whisper: ``d_model -> d_model``), so the written adapter computes exactly ours."""
    out = dict(tensors)
    for point, cross in _cross_points(spec).items():
        for key, tensor in tensors.items():
            _, layer, own, param = key.split(".")
            if own == point and int(layer) >= first_len and f"layers.{layer}.{cross}.{param}" not in tensors:
                out[f"layers.{layer}.{cross}.{param}"] = torch.zeros_like(tensor)
    return out


def write_lora(
    tensors: Mapping[str, torch.Tensor], spec: ArchitectureSpec, name: str, prefix: str
) -> dict[str, torch.Tensor]:
    """Our tensors -> their weight names (fused projections concatenated block-diagonally)."""
    out: dict[str, torch.Tensor] = {}
    grouped: dict[tuple[str, str, str], list[tuple[int, torch.Tensor]]] = {}
    module_of = _linear_modules(spec)
    for key, tensor in tensors.items():
        _, layer, point, param = key.split(".")
        linear = spec.linears.get(point)
        which = param[-1]
        order = linear.part[0] if linear is not None and linear.part is not None else 0
        grouped.setdefault((layer, module_of[point], which), []).append((order, tensor))
    for (layer, module, which), parts in grouped.items():
        path = f"{spec.adapters_lib_layers}.{layer}.{module}.loras.{name}.lora_{which}"
        full = f"{prefix}.{path}" if prefix else path
        out[full] = torch.cat([t for _, t in sorted(parts, key=lambda item: item[0])], dim=0)
    return out

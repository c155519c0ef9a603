"""VeRA in the `adapters` library's layout (1.3): its ``VeraConfig`` (a LoRA config with ``vera_d`` / ``vera_b``)
read as our ``vera`` with ``lambda_form="matrix"``, and written back.

That library's VeRA differs from peft's (and the paper's): per projection it trains full matrices ``vera_D (r, r)``
and ``vera_B (d_out, d_out)`` (started at ``vera_d · I`` / ``vera_b · I``), and multiplies the update by
``alpha / r``: ``y' = y + alpha / r · vera_B lora_B vera_D lora_A dropout(x)``. The frozen pair ``lora_A (r, d_in)``
/ ``lora_B (d_out, r)`` is drawn from the global torch generator (Kaiming-uniform, the bounds peft uses) with the
shape of the first adapted projection, is not sliced, and is always saved, at
``<prefix>.shared_parameters.NAME.lora_A`` / ``lora_B``; the matrices at
``<prefix>.<layers>.<i>.<module>.loras.NAME.vera_D`` / ``vera_B``. Gated VeRA (``use_gating``): a gate
``Linear(d_in, 1)`` per projection at ``...loras.NAME.gate.weight`` / ``gate.bias`` whose
``mean_T sigmoid(gate(x))`` multiplies the update in place of ``alpha / r`` (ours: ``use_gating``, the same names
under ``layers.<i>.<point>``). DVoRA (``use_dora``): a magnitude ``...loras.NAME.m.weight (d_out, 1)`` per
projection (ours: ``use_dora``, ``layers.<i>.<point>.magnitude (d_out,)``) and the output
``m / ‖W + vera_B lora_B vera_D lora_A‖ · (W x + b + update)``.

Ours: ``vera_lambda_d`` = ``vera_D``, ``vera_lambda_b`` = ``vera_B``, ``vera_A`` / ``vera_B`` (the adapter's shared
pair) = ``lora_A`` / ``lora_B``, ``scaling = alpha / r``, ``d_initial`` / ``b_initial`` = ``vera_d`` / ``vera_b``.
Writing our vector form puts ``diag(λ)`` in the matrices (the same outputs). Refused:
dtypes other than float32, DVoRA on a GPT-2 ``Conv1D`` (that library's norm reads the stored, transposed weight), VeRA on a slice of a fused projection (GPT-2's ``c_attn``: that library has no VeRA
path there), and targets of different shapes (that library's unsliced shared pair cannot serve them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.io.adapters_lib_lora import check_their_targets
from adapterhub.methods.vera import shared_projections
from adapterhub.runtime.layers import get_layers
from adapterhub.spec.architectures import ArchitectureSpec

_REFUSED: dict[str, Any] = {"composition_mode": "add"}
# their name at a projection's loras.NAME -> ours at layers.<i>.<point>
_THEIRS = {
    "vera_D": "vera_lambda_d",
    "vera_B": "vera_lambda_b",
    "gate.weight": "gate.weight",
    "gate.bias": "gate.bias",
    "m.weight": "magnitude",  # (d_out, 1) there, (d_out,) here
}
_OURS = {ours: theirs for theirs, ours in _THEIRS.items()}


def is_vera(theirs: Mapping[str, Any]) -> bool:
    """That library builds VeRA for a LoRA config whose ``vera_d`` or ``vera_b`` is a number."""
    return theirs.get("architecture") == "lora" and any(
        isinstance(theirs.get(key), (int, float)) and not isinstance(theirs.get(key), bool)
        for key in ("vera_d", "vera_b")
    )


def read_vera(
    theirs: Mapping[str, Any], raw: Mapping[str, torch.Tensor], spec: ArchitectureSpec, name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Their VeRA config and weights -> our config dict and tensors (``layers.<i>.<point>.vera_lambda_d``,
    ``vera_A``, ``vera_B``)."""
    for key, default in _REFUSED.items():
        if theirs.get(key, default) != default:
            raise ConfigError(
                f"The VeRA adapter uses the `adapters` option {key}={theirs[key]!r}, which adapterhub's VeRA does not "
                "support (additive VeRA only)."
            )
    if theirs.get("dtype") not in (None, "float32"):
        raise ConfigError(
            f"The VeRA adapter asks for dtype={theirs['dtype']!r}; adapterhub builds VeRA in the model's dtype. Save "
            "it in float32 with the `adapters` library."
        )
    if theirs.get("vera_d") is None or theirs.get("vera_b") is None:
        raise ConfigError(
            "The VeRA adapter sets only one of vera_d / vera_b; the `adapters` library cannot build it either "
            "(it multiplies by both). Set both."
        )
    point_of = {spec.adapters_lib_module(p): p for p, linear in spec.linears.items() if linear.part is None}
    fused = sorted(
        {spec.adapters_lib_module(p) for p, linear in spec.linears.items() if linear.part is not None}
    )
    modules = "|".join(re.escape(m) for m in sorted({*point_of, *fused}, key=len, reverse=True))
    site = re.compile(
        rf"^(?:.*\.)?{re.escape(spec.adapters_lib_layers)}\.(\d+)\.({modules})\.loras\.{re.escape(name)}\."
        rf"({'|'.join(re.escape(k) for k in _THEIRS)})$"
    )
    shared = re.compile(rf"^(?:.*\.)?shared_parameters\.{re.escape(name)}\.lora_([AB])$")
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        if (match := shared.match(key)) is not None:
            tensors[f"vera_{match.group(1)}"] = tensor
        elif (match := site.match(key)) is not None:
            layer, module, which = match.groups()
            if module not in point_of:
                raise AdapterFileError(
                    f"Weight {key!r} puts VeRA on the fused projection {module!r}; that library has no VeRA path "
                    "there and adapterhub none in its layout."
                )
            ours = _THEIRS[which]
            if ours == "magnitude":
                _check_dora_target(spec, point_of[module], name)
            tensors[f"layers.{layer}.{point_of[module]}.{ours}"] = (
                tensor.flatten() if ours == "magnitude" else tensor
            )
        else:
            raise AdapterFileError(
                f"Weight {key!r} does not match the {spec.model_types[0]} VeRA layout of the `adapters` library for "
                f"adapter {name!r} (<layers>.<i>.<module>.loras.{name}.vera_D / vera_B / gate.* / m.weight, "
                f"shared_parameters.{name}.lora_A / lora_B)."
            )
    missing = sorted({"vera_A", "vera_B"} - set(tensors))
    if missing:
        raise AdapterFileError(
            f"The `adapters` VeRA weights of {name!r} lack the shared shared_parameters.{name}.lora_"
            f"{' / lora_'.join(m[-1] for m in missing)}; that library saves them with every VeRA adapter."
        )
    targets = sorted(
        {key.split(".")[2] for key in tensors if key.startswith("layers.")}, key=list(spec.linears).index
    )
    if not targets:
        raise AdapterFileError(f"The `adapters` VeRA weights hold no vera_D / vera_B of {name!r}.")
    r = int(theirs.get("r", 8))
    config: dict[str, Any] = {
        "method": "vera",
        "lambda_form": "matrix",
        "r": r,
        "scaling": float(theirs.get("alpha", 8)) / r,
        "d_initial": float(theirs["vera_d"]),
        "b_initial": float(theirs["vera_b"]),
        "vera_dropout": float(theirs.get("dropout", 0.0)),
        "use_gating": bool(theirs.get("use_gating", False)),
        "use_dora": bool(theirs.get("use_dora", False)),
        "save_projection": True,
        "targets": targets,
        "leave_out": [int(i) for i in theirs.get("leave_out", [])],
    }
    return config, tensors


def _check_dora_target(spec: ArchitectureSpec, point: str, name: str) -> None:
    """That library's DVoRA takes the norms of a ``Conv1D`` weight as stored, ``(d_in, d_out)``: it cannot build
    it on a non-square one and computes other norms on a square one; refused both ways."""
    if spec.linears[point].transposed:
        raise ConfigError(
            f"Adapter {name!r} is DVoRA (use_dora) on {point!r}, a GPT-2 Conv1D; the `adapters` library's DVoRA takes "
            "the row norms of the stored (d_in, d_out) weight there (it fails on non-square ones, computes other "
            "norms on square ones), so this has no `adapters` form. Use layout='adapterhub'."
        )


def _d_in(model: nn.Module, spec: ArchitectureSpec, layer: int, point: str) -> int:
    module = get_layers(model, spec)[layer].get_submodule(spec.linears[point].module)
    if isinstance(module, nn.Linear):
        return int(module.in_features)
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return int(weight.shape[0])  # GPT-2 Conv1D: weight (d_in, d_out)


def vera_config_to_theirs(ours: Mapping[str, Any], spec: ArchitectureSpec) -> dict[str, Any]:
    """Our VeRA config -> their ``VeraConfig`` keys (``alpha = scaling · r``)."""
    if ours.get("target_modules") or ours.get("modules_to_save"):
        raise ConfigError(
            "VeRA targeted by module name (target_modules) or with modules_to_save has no `adapters` form; target "
            "spec points (targets=...) or save with layout='adapterhub'."
        )
    targets = list(ours.get("targets") or ("q", "v"))
    check_their_targets(targets, spec, "VeRA")
    location = {point: where for where, point in spec.adapters_lib_lora.items()}
    r = int(ours.get("r", 256))
    alpha = float(ours.get("scaling", 1.0)) * r
    return {
        "alpha": int(alpha) if alpha.is_integer() else alpha,
        "architecture": "lora",
        # their default when no attention matrix is adapted (selfattn_lora false: unused)
        "attn_matrices": [t for t in ("q", "k", "v") if t in targets] or ["q", "v"],
        "composition_mode": "add",
        "dropout": float(ours.get("vera_dropout", 0.0)),
        "dtype": None,
        "init_weights": "vera",
        "init_weights_seed": None,
        "intermediate_lora": any(location.get(t) == "intermediate" for t in targets),
        "leave_out": [int(i) for i in ours.get("leave_out", [])],
        "output_lora": any(location.get(t) == "output" for t in targets),
        "r": r,
        "selfattn_lora": any(t in ("q", "k", "v") for t in targets),
        "use_dora": bool(ours.get("use_dora", False)),
        "use_gating": bool(ours.get("use_gating", False)),
        "vera_b": float(ours.get("b_initial", 0.0)),  # floats: that library builds VeRA for float values only
        "vera_d": float(ours.get("d_initial", 0.1)),
    }


def write_vera(
    config: Mapping[str, Any],
    tensors: Mapping[str, torch.Tensor],
    spec: ArchitectureSpec,
    name: str,
    prefix: str,
    model: nn.Module,
) -> dict[str, torch.Tensor]:
    """Our tensors -> their weight names; vectors become diagonal matrices, the shared pair is sliced to the one
    shape of the targets (regenerated from ``projection_prng_key`` when ours was not saved)."""
    out: dict[str, torch.Tensor] = {}
    shapes: dict[tuple[int, int], list[str]] = {}
    for key, tensor in tensors.items():
        if key in ("vera_A", "vera_B"):
            continue
        _, layer, point, param = key.split(".", 3)
        linear = spec.linears[point]
        if linear.part is not None:
            raise ConfigError(
                f"Adapter {name!r} has VeRA on {point!r}, a slice of the fused {linear.module!r}; the `adapters` "
                "library has no VeRA path there. Save with layout='adapterhub'."
            )
        path = f"{spec.adapters_lib_layers}.{layer}.{spec.adapters_lib_module(point)}.loras.{name}.{_OURS[param]}"
        if param == "magnitude":
            _check_dora_target(spec, point, name)
        if param.startswith("gate.") or param == "magnitude":
            value = (
                tensor.reshape(-1, 1) if param == "magnitude" else tensor
            )  # m.weight (d_out, 1); gate as is
            out[f"{prefix}.{path}" if prefix else path] = value.detach().contiguous()
            continue
        matrix = tensor if tensor.dim() == 2 else torch.diag(tensor)  # (r, r) / (d_out, d_out)
        if param == "vera_lambda_b":
            shapes.setdefault((_d_in(model, spec, int(layer), point), matrix.shape[0]), []).append(
                f"{layer}.{point}"
            )
        out[f"{prefix}.{path}" if prefix else path] = matrix.detach().contiguous()
    if len(shapes) != 1:
        raise ConfigError(
            f"Adapter {name!r} adapts projections of different shapes ((d_in, d_out) -> layer.point: {shapes}); the "
            "`adapters` library's VeRA shares one unsliced A / B pair and cannot run it. Target projections of one "
            "shape, or save with layout='adapterhub'."
        )
    ((d_in, d_out),) = shapes
    r = int(config.get("r", 256))
    if "vera_A" in tensors and "vera_B" in tensors:
        a, b = tensors["vera_A"], tensors["vera_B"]
    else:
        a, b = shared_projections(int(config.get("projection_prng_key", 0)), r, d_in, d_out)
    shared = f"{prefix}.shared_parameters.{name}" if prefix else f"shared_parameters.{name}"
    out[f"{shared}.lora_A"] = a[:, :d_in].detach().contiguous()  # (r, d_in)
    out[f"{shared}.lora_B"] = b[:d_out, :].detach().contiguous()  # (d_out, r)
    return out

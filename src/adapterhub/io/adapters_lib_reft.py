"""ReFT (LoReFT, NoReFT, DiReFT) in the `adapters` library's layout (1.3): its ``ReftConfig`` keys and the weights
``<prefix>.<layers>.<i>.reft_layer.refts.NAME.units.<j>.<param>`` (ours: ``layers.<i>.units.<j>.<param>``; an
orthogonal projection's ``projection.parametrizations.weight.original`` and ``...weight.0.base`` keep their names).

That library does not save ``subtract_projection`` (a class attribute, not a config field) and loads every ReFT
adapter with ``subtract_projection=True``: a DiReFT adapter it saved comes back from its own ``load_adapter`` as a
NoReFT with the projection subtracted. Reading follows its loader (``subtract_projection=True``), so both libraries
compute the same from such a file; writing an adapter with ``subtract_projection=False`` is refused (that library
would compute something else from it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.spec.architectures import ArchitectureSpec

_KEYS = ("layers", "prefix_positions", "suffix_positions", "r", "orthogonality", "tied_weights", "dropout")
_IGNORED = ("architecture", "init_weights_seed")  # how that library names the method; initialisation only


def read_reft(
    theirs: Mapping[str, Any], raw: Mapping[str, torch.Tensor], spec: ArchitectureSpec, name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Their ReFT config and weights -> our config dict and tensors."""
    if theirs.get("dtype") not in (None, "float32"):
        raise ConfigError(
            f"The ReFT adapter asks for dtype={theirs['dtype']!r}; adapterhub builds ReFT interventions in the "
            "model's dtype. Load it into a model of that dtype with the `adapters` library, or save it in float32."
        )
    if theirs.get("output_reft", True) is not True:
        raise ConfigError(
            "The ReFT adapter says output_reft=false; that library only intervenes on layer outputs."
        )
    if theirs.get("subtract_projection", True) is not True:
        raise ConfigError(
            "The ReFT adapter's config says subtract_projection=false, but the `adapters` library 1.3 ignores that "
            "key and loads it with the projection subtracted; adapterhub will not guess which was meant. Remove the "
            "key (to compute what that library does) or save the adapter with layout='adapterhub'."
        )
    unknown = sorted(
        set(theirs) - {*_KEYS, *_IGNORED, "dtype", "output_reft", "non_linearity", "subtract_projection"}
    )
    if unknown:
        raise ConfigError(f"The ReFT adapter's config has keys adapterhub does not know: {unknown}.")
    config: dict[str, Any] = {"method": "reft", "subtract_projection": True}
    config.update({key: theirs[key] for key in _KEYS if key in theirs})
    config["non_linearity"] = theirs.get("non_linearity")
    pattern = re.compile(
        rf"^(?:.*\.)?{re.escape(spec.adapters_lib_layers)}\.(\d+)\.reft_layer\.refts\.{re.escape(name)}\.(units\..+)$"
    )
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        match = pattern.match(key)
        if match is None:
            raise AdapterFileError(
                f"Unexpected key {key!r} in the `adapters` ReFT weights of {name!r} (expected "
                f"<{spec.adapters_lib_layers}>.<i>.reft_layer.refts.{name}.units.<j>.<param>)."
            )
        tensors[f"layers.{match.group(1)}.{match.group(2)}"] = tensor
    if not tensors:
        raise AdapterFileError(f"The `adapters` ReFT weights hold no intervention of {name!r}.")
    return config, tensors


def reft_config_to_theirs(ours: Mapping[str, Any]) -> dict[str, Any]:
    """Our ReFT config dict -> theirs; refuses ``subtract_projection=False`` (see the module docstring)."""
    if ours.get("subtract_projection", True) is not True:
        raise ConfigError(
            "This ReFT adapter does not subtract the projection (DiReFT); the `adapters` library 1.3 does not save "
            "that option and would load the adapter with the projection subtracted, computing something else. Save "
            "it with layout='adapterhub'."
        )
    layers = ours.get("layers", "all")
    return {
        "architecture": "reft",
        "dropout": ours["dropout"],
        "dtype": None,
        "init_weights_seed": None,
        "layers": layers if layers == "all" else list(layers),
        "non_linearity": ours.get("non_linearity"),
        "orthogonality": ours["orthogonality"],
        "output_reft": True,
        "prefix_positions": ours["prefix_positions"],
        "r": ours["r"],
        "suffix_positions": ours["suffix_positions"],
        "tied_weights": ours["tied_weights"],
    }


def write_reft(
    tensors: Mapping[str, torch.Tensor], spec: ArchitectureSpec, name: str, prefix: str
) -> dict[str, torch.Tensor]:
    """Our tensors (``layers.<i>.units.<j>.<param>``) -> their keys under the model's ``prefix``."""
    out: dict[str, torch.Tensor] = {}
    start = f"{prefix}." if prefix else ""
    for key, tensor in tensors.items():
        match = re.fullmatch(r"layers\.(\d+)\.(units\..+)", key)
        if match is None:
            raise AdapterFileError(f"Unexpected ReFT tensor {key!r} (expected layers.<i>.units.<j>.<param>).")
        path = f"{spec.adapters_lib_layers}.{match.group(1)}.reft_layer.refts.{name}.{match.group(2)}"
        out[start + path] = tensor.contiguous()
    return out

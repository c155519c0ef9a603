"""MAD-X invertible adapters in the `adapters` library's layout: the bottleneck part is written and read as any
bottleneck adapter (``adapterhub.io.adapters_lib``); the invertible part is ``<prefix>.invertible_adapters.NAME.
{F,G}.{0,2}.{weight,bias}`` (ours: ``inv.{F,G}.{0,2}.*``) and the config keys ``inv_adapter`` /
``inv_adapter_reduction_factor``."""

from __future__ import annotations

import re
from typing import Any

import torch

from adapterhub.errors import ConfigError

METHOD = "bottleneck_inv"
OUR_PREFIX = "inv."


def inv_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^(?:.*\.)?invertible_adapters\.{re.escape(name)}\.(.+)$")


def config_from_theirs(theirs: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """``ours`` (a bottleneck config read from ``theirs``) with the invertible part, if ``theirs`` has one."""
    kind = theirs.get("inv_adapter")
    if kind is None:
        return ours
    if kind != "nice":
        raise ConfigError(
            f"The adapter uses the `adapters` option inv_adapter={kind!r}; adapterhub supports 'nice' invertible "
            "adapters only."
        )
    factor = theirs.get("inv_adapter_reduction_factor")
    return {
        **ours,
        "method": METHOD,
        "inv_adapter": kind,
        **({"inv_adapter_reduction_factor": factor} if factor is not None else {}),
    }


def config_to_theirs(ours: dict[str, Any]) -> dict[str, Any]:
    """Our config as a plain bottleneck config (for ``adapters_lib.config_to_theirs``) and their inv keys."""
    plain = {k: v for k, v in ours.items() if k not in ("inv_adapter", "inv_adapter_reduction_factor")}
    return {**plain, "method": "bottleneck"}


def their_inv_keys(ours: dict[str, Any]) -> dict[str, Any]:
    return {
        "inv_adapter": ours["inv_adapter"],
        "inv_adapter_reduction_factor": ours["inv_adapter_reduction_factor"],
    }


def read_inv_tensor(key: str, name: str) -> str | None:
    """Their invertible-adapter weight name -> ours, or None when ``key`` is not one."""
    match = inv_pattern(name).match(key)
    return OUR_PREFIX + match.group(1) if match else None


def write_inv_tensors(
    tensors: dict[str, torch.Tensor], name: str, prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split our tensors into (bottleneck part, their invertible-adapter weights)."""
    rest: dict[str, torch.Tensor] = {}
    theirs: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if key.startswith(OUR_PREFIX):
            path = f"invertible_adapters.{name}.{key[len(OUR_PREFIX) :]}"
            theirs[f"{prefix}.{path}" if prefix else path] = tensor
        else:
            rest[key] = tensor
    return rest, theirs

"""The `adapters` library's ``ConfigUnion`` files (``MAMConfig``, ``UniPELTConfig``): read into our ``union``.

Their config is ``{"architecture": "union", "configs": [<part>, ...]}`` and every part's weights sit under the one
adapter name: prefix tuning under ``prefix_tunings.<name>`` (gates: ``<layer>.attention.self.prefix_tuning
.prefix_gates.<name>``), bottleneck adapters under ``adapters.<name>`` (gate: ``adapters.<name>.gate``), LoRA
under ``loras.<name>`` (gate: ``loras.<name>.gate``). Each part is read by the reader of its method and its keys
prefixed ``parts.<i>.``; a part with ``use_gating`` becomes our ``gated_*`` method (``methods/gating.py``).
Writing this layout is not supported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.io.adapters_lib import (
    _PREFIX_KEYS,
    _PREFIX_PARAMS,
    _load_weights,
    _read_bottleneck,
    _record,
)
from adapterhub.io.adapters_lib_lora import read_lora
from adapterhub.io.files import read_json
from adapterhub.runtime.records import AdapterRecord
from adapterhub.spec.architectures import ArchitectureSpec


def read_union_dir(
    directory: str | os.PathLike[str], spec: ArchitectureSpec, *, with_head: bool = True
) -> AdapterRecord:
    directory = Path(directory)
    meta = read_json(directory / "adapter_config.json")
    name = meta.get("name")
    if not name:
        raise AdapterFileError(f"{directory / 'adapter_config.json'} has no adapter name.")
    raw = _load_weights(directory, "pytorch_adapter.bin", "adapter.safetensors")
    claimed: set[str] = set()
    configs: list[dict[str, Any]] = []
    tensors: dict[str, torch.Tensor] = {}
    for i, theirs in enumerate(meta["config"].get("configs") or []):
        architecture = theirs.get("architecture")
        if architecture == "prefix_tuning":
            config, part, keys = _prefix(theirs, raw, spec, name)
        elif architecture == "lora":
            config, part, keys = _lora(theirs, raw, spec, name)
        elif architecture in (None, "bottleneck"):
            config, part, keys = _bottleneck(theirs, raw, spec, name, directory)
        else:
            raise ConfigError(
                f"Part {i} of the `adapters` union in {directory} is a {architecture!r} adapter; adapterhub reads "
                "unions of prefix tuning, bottleneck and LoRA adapters."
            )
        configs.append(config)
        claimed |= keys
        tensors.update({f"parts.{i}.{key}": tensor for key, tensor in part.items()})
    stray = sorted(set(raw) - claimed)
    if stray:
        raise AdapterFileError(
            f"Weight {stray[0]!r} in {directory} belongs to no part of the union {name!r}."
        )
    return _record(directory, meta, name, {"method": "union", "configs": configs}, tensors, spec, with_head)


def _without_gating(theirs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    return {**theirs, "use_gating": False}, bool(theirs.get("use_gating"))


def _prefix(
    theirs: dict[str, Any], raw: dict[str, torch.Tensor], spec: ArchitectureSpec, name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], set[str]]:
    theirs, gated = _without_gating(theirs)
    if theirs.get("encoder_prefix", True) is not True:
        raise ConfigError(
            "The prefix-tuning part uses encoder_prefix=false, which adapterhub does not support."
        )
    config: dict[str, Any] = {"method": "gated_prefix_tuning" if gated else "prefix_tuning"}
    for key in _PREFIX_KEYS:
        if theirs.get(key) is not None:
            config[key] = theirs[key]
    config["leave_out"] = [int(i) for i in config.get("leave_out", [])]
    if isinstance(config.get("non_linearity"), str):
        config["non_linearity"] = config["non_linearity"].lower()
    if gated:
        config["shared_gating"] = bool(theirs.get("shared_gating", True))
    pool = re.compile(rf"^(?:.*\.)?prefix_tunings\.{re.escape(name)}\.[^.]+\.(.+)$")
    gate = re.compile(
        rf"^(?:.*\.)?{re.escape(spec.adapters_lib_layers)}\.(\d+)\..*prefix_gates\.{re.escape(name)}\.(weight|bias)$"
    )
    tensors: dict[str, torch.Tensor] = {}
    keys: set[str] = set()
    for key, tensor in raw.items():
        match = pool.match(key)
        if match is not None and match.group(1) in _PREFIX_PARAMS:
            tensors[match.group(1)] = tensor
            keys.add(key)
        elif gated and (match := gate.match(key)) is not None:
            tensors[f"gates.{match.group(1)}.{match.group(2)}"] = tensor
            keys.add(key)
    control = tensors.get("control_trans")
    config["flat"] = control is not None and control.dim() == 1
    return config, tensors, keys


def _lora(
    theirs: dict[str, Any], raw: dict[str, torch.Tensor], spec: ArchitectureSpec, name: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], set[str]]:
    theirs, gated = _without_gating(theirs)
    tag = f".loras.{name}."
    mine = {k: t for k, t in raw.items() if tag in f".{k}"}
    gates = {
        k: t for k, t in mine.items() if re.search(rf"\.loras\.{re.escape(name)}\.gate\.(weight|bias)$", k)
    }
    if gates and not gated:
        raise AdapterFileError(f"The LoRA part of {name!r} has gate weights but use_gating is false.")
    config, tensors = read_lora(theirs, {k: t for k, t in mine.items() if k not in gates}, spec, name)
    if gated:
        config["method"] = "gated_lora"
        point_of = {linear.module: point for point, linear in spec.linears.items() if linear.part is None}
        modules = "|".join(re.escape(m) for m in point_of)
        pattern = re.compile(
            rf"^(?:.*\.)?{re.escape(spec.adapters_lib_layers)}\.(\d+)\.({modules})\.loras\.{re.escape(name)}"
            r"\.gate\.(weight|bias)$"
        )
        for key, tensor in gates.items():
            match = pattern.match(key)
            if match is None:
                raise AdapterFileError(
                    f"Gate weight {key!r} is not on a projection adapterhub can gate (fused projections are not "
                    "supported for gated LoRA)."
                )
            layer, module, param = match.groups()
            tensors[f"layers.{layer}.{point_of[module]}.gate.{param}"] = tensor
    return config, tensors, set(mine)


def _bottleneck(
    theirs: dict[str, Any], raw: dict[str, torch.Tensor], spec: ArchitectureSpec, name: str, directory: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], set[str]]:
    theirs, gated = _without_gating(theirs)
    tag = f".adapters.{name}."
    mine = {k: t for k, t in raw.items() if tag in f".{k}"}
    gates = {
        k: t for k, t in mine.items() if re.search(rf"\.adapters\.{re.escape(name)}\.gate\.(weight|bias)$", k)
    }
    config, tensors = _read_bottleneck(
        theirs, {k: t for k, t in mine.items() if k not in gates}, spec, name, directory
    )
    if gated:
        if config["method"] != "bottleneck":
            raise ConfigError(
                "Gated parallel adapters are not supported; gating applies to sequential adapters."
            )
        config["method"] = "gated_bottleneck"
        sites = dict(spec.adapters_lib_bottleneck_sites or spec.adapters_lib_sites)
        site_of = {path: site for site, path in sites.items()}
        paths = "|".join(re.escape(p) for p in site_of)
        pattern = re.compile(
            rf"^(?:.*\.)?{re.escape(spec.adapters_lib_layers)}\.(\d+)\.({paths})\.adapters\.{re.escape(name)}"
            r"\.gate\.(weight|bias)$"
        )
        for key, tensor in gates.items():
            match = pattern.match(key)
            if match is None:
                raise AdapterFileError(f"Unexpected gate weight {key!r} in {directory}.")
            tensors[f"layers.{match.group(1)}.{site_of[match.group(2)]}.gate.{match.group(3)}"] = tensor
    return config, tensors, set(mine)

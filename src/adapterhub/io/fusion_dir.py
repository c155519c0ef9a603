"""Fusion directories: ours (``fusion_config.json`` + ``fusion.safetensors``, docs/FORMAT.md) and the `adapters`
library's (``adapter_fusion_config.json`` + ``pytorch_model_adapter_fusion.bin`` / ``model_adapter_fusion.safetensors``).

Fusion weight keys (ours): ``layers.{i}.{site}.query.weight|bias``, ``...key.weight|bias``, ``...value.weight``.
Theirs: ``[prefix.]encoder.layer.{i}.{site path}.adapter_fusion_layer.{a,b,c}.{query|key|value}.{weight|bias}``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.io.adapter_dir import HEAD_CONFIG_FILE, read_head_files, write_record_dir
from adapterhub.io.files import read_json, read_tensors, write_json, write_tensors
from adapterhub.runtime.records import HeadRecord, ModelInfo
from adapterhub.spec.architectures import ArchitectureSpec
from adapterhub.spec.configs import canonical_json, sha256_hex

FORMAT = "adapterhub.fusion"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "fusion_config.json", "fusion.safetensors"
ADAPTERS_SUBDIR = "adapters"
THEIR_CONFIG_FILE = "adapter_fusion_config.json"


@dataclass
class FusionRecord:
    """A saved fusion, independent of its layout."""

    adapters: tuple[str, ...]
    config: dict[str, Any]  # FusionConfig as a dict
    model: ModelInfo
    tensors: dict[str, torch.Tensor]
    head: HeadRecord | None = None
    adapter_dirs: dict[str, Path] = field(default_factory=dict)  # adapters saved alongside (ours only)
    layout: str = "adapterhub"

    @property
    def name(self) -> str:
        return ",".join(self.adapters)


def write_fusion_dir(record: FusionRecord, directory: str | os.PathLike[str]) -> Path:
    """Write ``record`` (its adapters are written by the caller into ``adapters/<name>/``). The config goes last,
    so a directory with a config is complete."""
    return write_record_dir(
        directory,
        (FORMAT, CONFIG_FILE, WEIGHTS_FILE),
        name=record.name,
        config=record.config,
        tensors=record.tensors,
        head=record.head,
        model=record.model,
        extra={
            "adapters": list(record.adapters),
            "adapter_dirs": {n: f"{ADAPTERS_SUBDIR}/{n}" for n in record.adapter_dirs},
        },
    )


def read_fusion_dir(
    directory: str | os.PathLike[str], *, spec: ArchitectureSpec | None = None, with_head: bool = True
) -> FusionRecord:
    """Read a fusion directory in either layout."""
    directory = Path(directory)
    if (directory / CONFIG_FILE).is_file():
        return _read_ours(directory, with_head)
    if (directory / THEIR_CONFIG_FILE).is_file():
        if spec is None:
            raise ConfigError("Reading an `adapters` fusion directory needs the model's ArchitectureSpec.")
        return read_adapters_lib_fusion(directory, spec, with_head=with_head)
    present = sorted(p.name for p in directory.iterdir())[:10] if directory.is_dir() else []
    raise AdapterFileError(
        f"{directory} is not a fusion directory: it has neither {CONFIG_FILE} nor {THEIR_CONFIG_FILE} "
        f"(it contains: {', '.join(present) or 'nothing'}). Point to a directory written by model.save_adapter_fusion."
    )


def _read_ours(directory: Path, with_head: bool) -> FusionRecord:
    meta = read_json(directory / CONFIG_FILE)
    required = ("format", "adapters", "config", "model_type", "hidden_size")
    if not isinstance(meta, dict) or any(k not in meta for k in required):
        raise AdapterFileError(
            f"{directory / CONFIG_FILE} lacks keys of a fusion config ({', '.join(required)})."
        )
    if meta["format"] != FORMAT:
        raise AdapterFileError(
            f"{directory / CONFIG_FILE} has format {meta['format']!r}, expected {FORMAT!r}."
        )
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise AdapterFileError(
            f"{directory} was written in fusion format version {meta['format_version']}; this adapterhub reads up "
            f"to version {FORMAT_VERSION}. Upgrade adapterhub."
        )
    if meta.get("config_hash") and meta["config_hash"] != sha256_hex(canonical_json(meta["config"])):
        raise AdapterFileError(
            f"{directory / CONFIG_FILE}: config_hash does not match the config (edited or corrupted)."
        )
    head = read_head_files(directory) if with_head and (directory / HEAD_CONFIG_FILE).exists() else None
    return FusionRecord(
        adapters=tuple(meta["adapters"]),
        config=dict(meta["config"]),
        model=ModelInfo(
            model_type=meta["model_type"],
            model_name=meta.get("model_name", ""),
            hidden_size=int(meta["hidden_size"]),
            num_layers=meta.get("num_layers"),
        ),
        tensors=read_tensors(directory / WEIGHTS_FILE),
        head=head,
        adapter_dirs={n: directory / rel for n, rel in (meta.get("adapter_dirs") or {}).items()},
    )


# ------------------------------------------------------------------------------------------ `adapters` layout

# Their fusion options that our FusionConfig has; the others must have these values.
_THEIR_FIXED = {"residual_before": False, "temperature": False}


def fusion_config_from_theirs(theirs: dict[str, Any]) -> dict[str, Any]:
    for key, required in _THEIR_FIXED.items():
        if theirs.get(key, required) != required:
            raise ConfigError(
                f"This `adapters` fusion uses {key}={theirs[key]!r}, which adapterhub does not support "
                f"(only {key}={required!r})."
            )
    # value_before_softmax does not change the result: their V has no bias, so V(Σ p u) = Σ p (V u).
    return {
        "query": bool(theirs.get("query", True)),
        "key": bool(theirs.get("key", True)),
        "value": bool(theirs.get("value", True)),
        "query_before_ln": bool(theirs.get("query_before_ln", False)),
        "value_initialized": bool(theirs.get("value_initialized", False)),
        "regularization": bool(theirs.get("regularization", False)),
        "dropout": theirs.get("dropout_prob"),
    }


def fusion_config_to_theirs(ours: dict[str, Any]) -> dict[str, Any]:
    """Our FusionConfig dict as theirs. ``reg_weight`` and ``init_std`` only matter when training starts and have
    no place there (that library always weighs the regulariser 0.01)."""
    return {
        "dropout_prob": ours.get("dropout"),
        "key": bool(ours.get("key", True)),
        "query": bool(ours.get("query", True)),
        "query_before_ln": bool(ours.get("query_before_ln", False)),
        "regularization": bool(ours.get("regularization", True)),
        "residual_before": False,
        "temperature": False,
        "value": bool(ours.get("value", True)),
        "value_before_softmax": True,
        "value_initialized": bool(ours.get("value_initialized", True)),
    }


def write_adapters_lib_fusion(
    record: FusionRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: torch.nn.Module
) -> Path:
    """Write ``record`` in the `adapters` library's fusion layout: ``adapter_fusion_config.json``,
    ``model_adapter_fusion.safetensors`` + ``pytorch_model_adapter_fusion.bin`` (weights named
    ``<prefix>.<layers>.<i>.<site path>.adapter_fusion_layer.<a,b,c>.<query|key|value>.<weight|bias>``) and the
    head, if any, as that library writes it. Its ``load_adapter_fusion`` reads the directory; the fused adapters
    themselves are separate directories (``adapters/<name>/`` when the caller writes them)."""
    from adapterhub.io.adapters_lib import ADAPTERS_VERSION, adapter_model_class, write_their_head
    from adapterhub.io.adapters_lib_stacks import has_stack_paths
    from adapterhub.io.files import write_torch_pickle
    from adapterhub.runtime.layers import get_base_model

    if has_stack_paths(spec):
        raise ConfigError(
            f"AdapterFusion in the `adapters` layout is not mapped for {spec.model_types[0]} models (two layer "
            "stacks named per stack: CLIPModel, Whisper); save the fusion with layout='adapterhub' (its adapters "
            "can still be saved in the `adapters` layout one by one)."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fusion_name = record.name
    prefix = getattr(get_base_model(model), "base_model_prefix", "") or ""
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in record.tensors.items():
        _, layer, site, module, param = key.split(".")
        path = (
            f"{spec.adapters_lib_layers}.{layer}.{spec.adapters_lib_sites[site]}.adapter_fusion_layer."
            f"{fusion_name}.{module}.{param}"
        )
        tensors[f"{prefix}.{path}" if prefix else path] = tensor.contiguous()
    model_class = adapter_model_class(model)
    if record.head is not None:
        write_their_head(directory, record.head, record.model, model_class)
    write_tensors(directory / "model_adapter_fusion.safetensors", tensors)
    write_torch_pickle(directory / "pytorch_model_adapter_fusion.bin", tensors)
    write_json(
        directory / THEIR_CONFIG_FILE,
        {
            "adapter_names": list(record.adapters),
            "config": fusion_config_to_theirs(record.config),
            "hidden_size": record.model.hidden_size,
            "model_class": model_class,
            "model_name": record.model.model_name,
            "model_type": record.model.model_type,
            "name": fusion_name,
            "version": ADAPTERS_VERSION,
        },
    )
    return directory


def read_adapters_lib_fusion(
    directory: Path, spec: ArchitectureSpec, *, with_head: bool = True
) -> FusionRecord:
    meta = read_json(directory / THEIR_CONFIG_FILE)
    names = meta.get("adapter_names") or str(meta.get("name", "")).split(",")
    if not names or not all(names):
        raise AdapterFileError(f"{directory / THEIR_CONFIG_FILE} names no adapters.")
    fusion_name = ",".join(names)
    sites = "|".join(re.escape(p) for p in spec.adapters_lib_sites.values())
    pattern = re.compile(
        rf"^(?:.*\.)?{re.escape(spec.adapters_lib_layers)}\.(\d+)\.({sites})\.adapter_fusion_layer\."
        rf"{re.escape(fusion_name)}\.(query|key|value)\.(weight|bias)$"
    )
    site_of = {path: site for site, path in spec.adapters_lib_sites.items()}
    if (directory / "model_adapter_fusion.safetensors").exists():
        raw = read_tensors(directory / "model_adapter_fusion.safetensors")
    else:
        from adapterhub.io.files import read_torch_pickle

        raw = read_torch_pickle(directory / "pytorch_model_adapter_fusion.bin")
    tensors = {}
    for key, tensor in raw.items():
        match = pattern.match(key)
        if match is None:
            raise AdapterFileError(
                f"Weight {key!r} in {directory} is not a fusion weight of {fusion_name!r} in the "
                f"{spec.model_types[0]} layout of the `adapters` library."
            )
        layer, site_path, module, param = match.groups()
        tensors[f"layers.{layer}.{site_of[site_path]}.{module}.{param}"] = tensor
    head = None
    if with_head and (directory / "head_config.json").exists():
        from adapterhub.io.adapters_lib import _read_their_head

        head = _read_their_head(directory, fusion_name, spec)
    return FusionRecord(
        adapters=tuple(names),
        config=fusion_config_from_theirs(dict(meta.get("config") or {})),
        model=ModelInfo(
            model_type=meta.get("model_type", ""),
            model_name=meta.get("model_name") or "",
            hidden_size=int(meta["hidden_size"]),
            num_layers=None,
        ),
        tensors=tensors,
        head=head,
        adapter_dirs={
            n: directory / ADAPTERS_SUBDIR / n
            for n in names
            if (
                directory / ADAPTERS_SUBDIR / n
            ).is_dir()  # written by save_adapter_fusion(with_adapters=True)
        },
        layout="adapters",
    )

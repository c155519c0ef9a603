"""Inspecting an uploaded adapter without torch: its JSON files and the headers of its safetensors files.

The hub's ``header`` weights check (``HubSettings.weights_check``), for a server installed without torch. What it
checks, for the adapterhub layout (``adapter_config.json`` + ``adapter.safetensors``, optionally
``head_config.json`` + ``head.safetensors``):

* the config files: required keys, format and format version, ``config_hash`` = sha256 of the canonical config;
  for the methods whose config classes load without torch (bottleneck, LoRA) the config must also be valid and
  canonical (what ``resolve_config(config).to_dict()`` gives); for the others, that it names its ``method``;
* every safetensors file: the 8-byte header length, a JSON header of tensors with a known dtype, a shape of
  non-negative integers and data offsets that tile the data section exactly (``size = prod(shape) · itemsize``,
  no gap, no overlap, nothing after the last tensor), so a truncated or padded file is refused;
* the weights against the declared model: no layer index at or past ``num_layers``, a bottleneck's ``up.bias`` of
  the declared hidden size; layer weights or a declared ``num_layers``; no module named in the weights
  (``by_name.model:layers:7:self_attn:q_proj.lora_A``, copies) in a layer at or past ``num_layers``, read by the
  model type's layer stacks (``spec.module_layers``; a decoder's layers numbered after ``decoder_start``);
* the modules a LoRA, LoHa or LoKr targets by name: each one's factors make one linear (or embedding) or
  convolution update, the declared Conv2d / Conv1d (``conv_modules``: in_channels and kernel_size, which LoHa's
  flattened kernel does not say) where the config names one (``spec.manifest.low_rank_modules``), recorded in the manifest's
  ``modules``;

What it cannot check without the method modules (torch): that the weights' names and shapes are exactly those the
config implies, and that the model type is one the library supports. The ``full`` check
(:func:`adapterhub.io.manifest.inspect_adapter_dir`) does both; the client checks again when it loads an adapter.
The other layouts (the ``adapters`` library's, peft's) are converted by torch code, so this check refuses them
with what to do instead.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapterhub.errors import (
    AdapterFileError,
    AdapterHubError,
    IncompatibleModelError,
    UnsupportedArchitectureError,
)
from adapterhub.spec.architecture import ArchitectureSpec
from adapterhub.spec.architectures import spec_for_model_type
from adapterhub.spec.configs import METHOD_CONFIGS, canonical_json, resolve_config, sha256_hex
from adapterhub.spec.factor_shapes import CONV_MODULES, read_conv_modules
from adapterhub.spec.manifest import AdapterManifest, low_rank_modules
from adapterhub.spec.module_layers import check_module_layers

FORMAT = "adapterhub.adapter"
HEAD_FORMAT = "adapterhub.head"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter.safetensors"
HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE = "head_config.json", "head.safetensors"

# bytes per element of each safetensors dtype
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the safetensors header describes it."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of the safetensors file at ``path`` by name, after checking the header describes the file
    exactly (see the module docstring); raises AdapterFileError naming the file and the problem."""
    if not path.is_file():
        raise AdapterFileError(f"{path.name} is missing.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise AdapterFileError(
                f"{path.name} is not a safetensors file (shorter than its 8-byte header length)."
            )
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(MAX_HEADER_BYTES, size - 8):
            raise AdapterFileError(
                f"{path.name}: the header length {header_len} is larger than the file; it is truncated or not "
                "a safetensors file."
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise AdapterFileError(f"{path.name}: the safetensors header is not JSON ({error}).") from None
    if not isinstance(header, dict):
        raise AdapterFileError(f"{path.name}: the safetensors header is not a JSON object.")
    header.pop("__metadata__", None)
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        tensors[name] = _tensor_entry(path, name, entry, spans)
    data_len = size - 8 - header_len
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise AdapterFileError(
                f"{path.name}: tensor {name!r} starts at byte {begin} of the data, expected {end} (a gap or an "
                "overlap); the file is corrupted."
            )
        end = stop
    if end != data_len:
        raise AdapterFileError(
            f"{path.name}: the tensors cover {end} bytes but the file holds {data_len} bytes of data; it is "
            "truncated or has trailing bytes."
        )
    return tensors


def _tensor_entry(path: Path, name: str, entry: Any, spans: list[tuple[int, int, str]]) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise AdapterFileError(f"{path.name}: the header entry of {name!r} is not dtype/shape/data_offsets.")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise AdapterFileError(
            f"{path.name}: tensor {name!r} has dtype {dtype!r}; known: {', '.join(sorted(DTYPE_SIZES))}."
        )
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise AdapterFileError(f"{path.name}: tensor {name!r} has shape {shape!r}, not a list of sizes.")
    if not (
        isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
    ):
        raise AdapterFileError(
            f"{path.name}: tensor {name!r} has data_offsets {offsets!r}, not [begin, end]."
        )
    info = TensorInfo(dtype, tuple(shape))
    if offsets[1] - offsets[0] != info.numel * DTYPE_SIZES[dtype]:
        raise AdapterFileError(
            f"{path.name}: tensor {name!r} ({dtype}, shape {tuple(shape)}) spans {offsets[1] - offsets[0]} bytes, "
            f"not {info.numel * DTYPE_SIZES[dtype]}; the file is corrupted."
        )
    spans.append((offsets[0], offsets[1], name))
    return info


def _read_json_object(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AdapterFileError(f"{path.name} is missing.") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise AdapterFileError(f"{path.name} is not valid JSON ({error}).") from None
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path.name} must hold a JSON object.")
    missing = [k for k in keys if k not in data]
    if missing:
        raise AdapterFileError(f"{path.name} lacks the key(s) {', '.join(missing)}.")
    return data


def _other_layout(meta: dict[str, Any]) -> str | None:
    if "peft_type" in meta:
        return "peft's"
    if "config" in meta and ("version" in meta or "model_class" in meta):
        return "the `adapters` library's"
    return None


def _canonical_config(config: Any, where: str) -> tuple[str, dict[str, Any]]:
    """``(method, canonical config)``; the config is re-derived where its class loads without torch."""
    if not isinstance(config, dict) or not isinstance(config.get("method", "bottleneck"), str):
        raise AdapterFileError(f"{where}: 'config' must be a JSON object that names its method.")
    method = str(config.get("method", "bottleneck"))
    if method not in METHOD_CONFIGS:
        if "method" not in config:
            raise AdapterFileError(f"{where}: the config does not state its method.")
        return method, dict(config)
    try:
        canonical = resolve_config(config).to_dict()
    except AdapterHubError as error:
        raise AdapterFileError(f"{where}: the config is not valid: {error}") from None
    if canonical != config:
        raise AdapterFileError(
            f"{where}: the config is not in canonical form (save the adapter again with model.save_adapter)."
        )
    return method, canonical


def inspect_from_headers(directory: Path, *, model_type: str | None = None) -> AdapterManifest:
    """Describe and check the adapter directory at ``directory`` without torch (see the module docstring).

    Raises AdapterFileError for a broken or unsupported directory and IncompatibleModelError when the weights do
    not fit the declared model; ``model_type`` fills in a model type the files do not state.
    """
    config_path = directory / CONFIG_FILE
    meta = _read_json_object(config_path, ())
    other = _other_layout(meta)
    if meta.get("format") != FORMAT:
        raise AdapterFileError(
            f"{CONFIG_FILE} is "
            + (
                f"in {other} layout"
                if other
                else f"not an adapterhub adapter config (format {meta.get('format')!r})"
            )
            + ". This hub checks weights without torch and reads only the adapterhub layout: load the adapter "
            "with adapterhub and save it with model.save_adapter(...) before pushing, or ask the hub's host for "
            "the full weights check (the library with torch installed)."
        )
    meta = _read_json_object(config_path, ("format", "name", "config", "model_type", "hidden_size"))
    if type(meta.get("format_version", 1)) is not int or meta.get("format_version", 1) > FORMAT_VERSION:
        raise AdapterFileError(
            f"{CONFIG_FILE} has format version {meta.get('format_version')!r}; this hub reads up to "
            f"{FORMAT_VERSION}."
        )
    if meta.get("config_hash") and meta["config_hash"] != sha256_hex(canonical_json(meta["config"])):
        raise AdapterFileError(f"{CONFIG_FILE}: config_hash does not match the config; the file was edited.")
    method, config = _canonical_config(meta["config"], CONFIG_FILE)
    hidden_size, num_layers = meta["hidden_size"], meta.get("num_layers")
    if type(hidden_size) is not int or hidden_size <= 0:
        raise AdapterFileError(f"{CONFIG_FILE}: hidden_size {hidden_size!r} is not a positive integer.")
    if num_layers is not None and (type(num_layers) is not int or num_layers <= 0):
        raise AdapterFileError(f"{CONFIG_FILE}: num_layers {num_layers!r} is not a positive integer.")
    tensors = read_safetensors_header(directory / WEIGHTS_FILE)
    _check_declared_model(tensors, hidden_size, num_layers)
    head_type = id2label = None
    has_head = (directory / HEAD_CONFIG_FILE).exists()
    if has_head:
        head = _read_json_object(directory / HEAD_CONFIG_FILE, ("format", "name", "type", "config"))
        if head["format"] != HEAD_FORMAT or not isinstance(head["type"], str):
            raise AdapterFileError(f"{HEAD_CONFIG_FILE} is not an adapterhub head config.")
        head_type = head["type"]
        labels = head.get("id2label")
        if labels is not None:
            if not isinstance(labels, dict) or not all(str(k).lstrip("-").isdigit() for k in labels):
                raise AdapterFileError(f"{HEAD_CONFIG_FILE}: id2label must map integers to labels.")
            id2label = {int(k): str(v) for k, v in labels.items()}
        read_safetensors_header(directory / HEAD_WEIGHTS_FILE)
    stated = meta["model_type"] or model_type
    if not isinstance(stated, str) or not stated:
        raise AdapterFileError(f"{CONFIG_FILE} does not say which model type the adapter is for.")
    spec = _check_module_layers(tensors, stated, num_layers, meta.get("decoder_start"))
    declared = read_conv_modules(meta.get(CONV_MODULES), CONFIG_FILE)  # nn.Conv2d targets' c_in and kernel
    modules = low_rank_modules(
        {k: t.shape for k, t in tensors.items()}, spec, meta.get("decoder_start"), WEIGHTS_FILE, declared
    )
    model_name = meta.get("model_name") or ""
    if not isinstance(model_name, str):
        raise AdapterFileError(f"{CONFIG_FILE}: model_name must be a string.")
    return AdapterManifest(
        layout="adapterhub",
        name=str(meta["name"]),
        method=method,
        config=config,
        config_hash=sha256_hex(canonical_json(config)),
        model_type=stated,
        model_name=model_name,
        hidden_size=hidden_size,
        num_layers=num_layers,
        has_head=has_head,
        head_type=head_type,
        id2label=id2label,
        num_parameters=sum(t.numel for t in tensors.values()),
        files=tuple(sorted(p.name for p in directory.iterdir() if p.is_file())),
        modules=modules,
    )


def _check_module_layers(
    tensors: dict[str, TensorInfo], model_type: str, num_layers: int | None, decoder_start: Any
) -> ArchitectureSpec | None:
    """Modules named in the weights (``by_name.<path>.…``, copies) must sit in layers the declared model has, read
    by the model type's layer stacks; a model type without an ArchitectureSpec has no stacks to read them by (the
    full check refuses it). Returns the spec, or None for such a model type."""
    if decoder_start is not None and (type(decoder_start) is not int or decoder_start < 0):
        raise AdapterFileError(
            f"{CONFIG_FILE}: decoder_start {decoder_start!r} is not a non-negative integer."
        )
    try:
        spec = spec_for_model_type(model_type)
    except UnsupportedArchitectureError:
        return None
    check_module_layers(spec, tensors, num_layers, decoder_start, WEIGHTS_FILE)
    return spec


def _check_declared_model(tensors: dict[str, TensorInfo], hidden_size: int, num_layers: int | None) -> None:
    """Weights for more layers than declared, or a bottleneck for another hidden size, are a model mismatch."""
    layers = [int(m.group(1)) for key in tensors if (m := _LAYER_KEY.match(key))]
    if not layers and num_layers is None:
        raise AdapterFileError(f"{WEIGHTS_FILE} has no layer weights ('layers.N....') and no num_layers.")
    if num_layers is not None and layers and max(layers) >= num_layers:
        raise IncompatibleModelError(
            f"{WEIGHTS_FILE} has weights for layer {max(layers)}, but the declared model has {num_layers} layers."
        )
    for key, info in tensors.items():
        if key.endswith(".up.bias") and info.shape[:1] != (hidden_size,):
            raise IncompatibleModelError(
                f"weight {key!r} is for hidden size {info.shape[0] if info.shape else '?'}, but the adapter "
                f"config declares hidden size {hidden_size}."
            )

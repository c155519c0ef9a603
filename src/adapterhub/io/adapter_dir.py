"""Our adapter directory layout (docs/FORMAT.md): ``adapter_config.json`` + ``adapter.safetensors`` and optionally
``head_config.json`` + ``head.safetensors``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterFileError
from adapterhub.io.files import read_json, read_tensors, write_json, write_tensors
from adapterhub.runtime.records import AdapterRecord, HeadRecord, ModelInfo
from adapterhub.spec.configs import canonical_json, sha256_hex
from adapterhub.spec.factor_shapes import CONV_MODULES, conv_modules_json, read_conv_modules

FORMAT = "adapterhub.adapter"
HEAD_FORMAT = "adapterhub.head"
FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter.safetensors"
HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE = "head_config.json", "head.safetensors"


def library_version() -> str:
    from adapterhub.version import __version__

    return __version__


def write_adapter_dir(record: AdapterRecord, directory: str | os.PathLike[str]) -> Path:
    """Write ``record`` into ``directory`` (created if needed). Each file is replaced atomically; the config is
    written last, so a directory with a config is always complete."""
    extra: dict[str, Any] = {}
    if record.model.decoder_start is not None:
        extra["decoder_start"] = record.model.decoder_start
    if record.model.stack_widths:  # stacks of different widths (CLIPModel's towers)
        extra["stack_widths"] = [list(w) for w in record.model.stack_widths]
    if record.model.conv_modules:  # what a convolution's flattened factors do not say (spec.factor_shapes)
        extra[CONV_MODULES] = conv_modules_json(record.model.conv_modules)
    return write_record_dir(
        directory,
        (FORMAT, CONFIG_FILE, WEIGHTS_FILE),
        name=record.name,
        config=record.config,
        tensors=record.tensors,
        head=record.head,
        model=record.model,
        extra=extra,
    )


def write_record_dir(
    directory: str | os.PathLike[str],
    files: tuple[str, str, str],
    *,
    name: str,
    config: dict[str, Any],
    tensors: dict[str, Any],
    head: HeadRecord | None,
    model: ModelInfo,
    extra: dict[str, Any],
) -> Path:
    """Write one record directory: the head files, the weights ``files[2]``, then the config ``files[1]`` (format
    ``files[0]``, the shared header fields and ``extra``) last, so a directory with a config is complete."""
    fmt, config_file, weights_file = files
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_head_files(directory, head, model)
    write_tensors(directory / weights_file, tensors)
    write_json(
        directory / config_file,
        {
            "format": fmt,
            "format_version": FORMAT_VERSION,
            "library_version": library_version(),
            "name": name,
            "config": config,
            "config_hash": sha256_hex(canonical_json(config)),
            "model_type": model.model_type,
            "model_name": model.model_name,
            "hidden_size": model.hidden_size,
            "num_layers": model.num_layers,
            "has_head": head is not None,
            **extra,
        },
    )
    return directory


def write_head_files(directory: Path, head: HeadRecord | None, model: ModelInfo) -> None:
    """``head_config.json`` + ``head.safetensors`` for ``head``; with no head, remove stale head files."""
    if head is None:
        for stale in (HEAD_CONFIG_FILE, HEAD_WEIGHTS_FILE):
            (directory / stale).unlink(missing_ok=True)
        return
    write_tensors(directory / HEAD_WEIGHTS_FILE, head.tensors)
    write_json(
        directory / HEAD_CONFIG_FILE,
        {
            "format": HEAD_FORMAT,
            "format_version": FORMAT_VERSION,
            "name": head.name,
            "type": head.head_type,
            "config": head.options,
            "id2label": None if head.id2label is None else {str(k): v for k, v in head.id2label.items()},
            "model_type": model.model_type,
            "hidden_size": model.hidden_size,
        },
    )


def read_head_files(directory: Path) -> HeadRecord:
    head_meta = read_json(directory / HEAD_CONFIG_FILE)
    _require_keys(directory / HEAD_CONFIG_FILE, head_meta, ("format", "name", "type", "config"))
    id2label = head_meta.get("id2label")
    return HeadRecord(
        name=head_meta["name"],
        head_type=head_meta["type"],
        options=dict(head_meta["config"]),
        id2label=None if id2label is None else {int(k): str(v) for k, v in id2label.items()},
        tensors=read_tensors(directory / HEAD_WEIGHTS_FILE),
    )


def _stack_widths(directory: Path, raw: Any) -> tuple[tuple[int, int, int | None, int | None], ...]:
    """``stack_widths`` of an adapter config: a list of ``[first layer, hidden_size, num_kv_heads, head_dim]``
    (absent: ``()``)."""
    if raw is None:
        return ()
    ok = isinstance(raw, list) and all(
        isinstance(w, list)
        and len(w) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) for v in w[:2])
        and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in w[2:])
        for w in raw
    )
    if not ok:
        raise AdapterFileError(
            f"{directory / CONFIG_FILE}: stack_widths must be a list of [first layer, hidden_size, num_kv_heads, "
            f"head_dim] per layer stack, got {raw!r}."
        )
    return tuple((int(w[0]), int(w[1]), w[2], w[3]) for w in raw)


def _require_keys(path: Path, data: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(data, dict):
        raise AdapterFileError(f"{path} must hold a JSON object.")
    missing = [k for k in keys if k not in data]
    if missing:
        raise AdapterFileError(
            f"{path} lacks the key(s) {', '.join(missing)}; it is not a complete adapter config."
        )


def read_adapter_dir(directory: str | os.PathLike[str], *, with_head: bool = True) -> AdapterRecord:
    directory = Path(directory)
    meta = read_json(directory / CONFIG_FILE)
    _require_keys(directory / CONFIG_FILE, meta, ("format", "name", "config", "model_type", "hidden_size"))
    if meta["format"] != FORMAT:
        raise AdapterFileError(
            f"{directory / CONFIG_FILE} has format {meta['format']!r}, expected {FORMAT!r}."
        )
    if int(meta.get("format_version", 1)) > FORMAT_VERSION:
        raise AdapterFileError(
            f"{directory} was written in format version {meta['format_version']} by adapterhub "
            f"{meta.get('library_version')}; this adapterhub ({library_version()}) reads up to version "
            f"{FORMAT_VERSION}. Upgrade adapterhub."
        )
    expected_hash = meta.get("config_hash")
    if expected_hash and expected_hash != sha256_hex(canonical_json(meta["config"])):
        raise AdapterFileError(
            f"{directory / CONFIG_FILE}: config_hash does not match the config; the file was edited or corrupted."
        )
    head = read_head_files(directory) if with_head and (directory / HEAD_CONFIG_FILE).exists() else None
    return AdapterRecord(
        name=meta["name"],
        config=dict(meta["config"]),
        model=ModelInfo(
            model_type=meta["model_type"],
            model_name=meta.get("model_name", ""),
            hidden_size=int(meta["hidden_size"]),
            num_layers=meta.get("num_layers"),
            decoder_start=meta.get("decoder_start"),
            stack_widths=_stack_widths(directory, meta.get("stack_widths")),
            conv_modules=read_conv_modules(meta.get(CONV_MODULES), str(directory / CONFIG_FILE)),
        ),
        tensors=read_tensors(directory / WEIGHTS_FILE),
        head=head,
        layout="adapterhub",
        extra={"library_version": meta.get("library_version")},
    )

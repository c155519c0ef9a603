"""Read an adapter directory in whichever supported layout it is."""

from __future__ import annotations

import os
from pathlib import Path

from adapterhub.errors import AdapterFileError
from adapterhub.io.adapter_dir import CONFIG_FILE, FORMAT, read_adapter_dir
from adapterhub.io.files import read_json
from adapterhub.runtime.records import AdapterRecord, ModelInfo
from adapterhub.spec.architectures import ArchitectureSpec, spec_for_model_type


def detect_layout(directory: str | os.PathLike[str]) -> str:
    """``"adapterhub"``, ``"adapters"`` or ``"peft"``; raises AdapterFileError for a directory that is not an adapter."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AdapterFileError(f"{directory} is not a directory.")
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        present = sorted(p.name for p in directory.iterdir())[:10]
        raise AdapterFileError(
            f"{directory} is not an adapter directory: it has no {CONFIG_FILE} (it contains: "
            f"{', '.join(present) or 'nothing'}). Point to a directory written by model.save_adapter(...)."
        )
    meta = read_json(config_path)
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        return "adapterhub"
    if isinstance(meta, dict) and "peft_type" in meta:
        return "peft"
    if isinstance(meta, dict) and "config" in meta and ("version" in meta or "model_class" in meta):
        return "adapters"
    raise AdapterFileError(
        f"{config_path} is neither an adapterhub nor an `adapters` library adapter config."
    )


def read_any_adapter_dir(
    directory: str | os.PathLike[str],
    *,
    spec: ArchitectureSpec | None = None,
    with_head: bool = True,
    model: ModelInfo | None = None,
) -> AdapterRecord:
    layout = detect_layout(directory)
    if layout == "adapterhub":
        return read_adapter_dir(directory, with_head=with_head)
    from adapterhub.io.adapters_lib_stacks import check_method, has_stack_paths, peft_layout_maps

    stacks = spec is not None and has_stack_paths(spec)
    if (
        spec is not None
        and spec.decoder is not None
        and not ((layout == "adapters" and stacks) or (layout == "peft" and peft_layout_maps(spec)))
    ):
        raise AdapterFileError(
            f"{directory}: reading the {layout!r} layout for {spec.model_types[0]} models (two layer stacks) is not "
            "implemented (its module names for the second stack are not mapped); adapterhub's own layout loads "
            "into them, peft's (LoRA / DoRA) into encoder-decoders and the `adapters` library's into CLIPModel and "
            "Whisper."
        )
    if layout == "peft":
        from adapterhub.io.peft_dispatch import read_peft_dir

        return read_peft_dir(directory, spec, model=model, with_head=with_head)
    from adapterhub.io.adapters_lib import read_adapters_lib_dir

    meta = read_json(Path(directory) / CONFIG_FILE)
    if spec is None:
        spec = spec_for_model_type(meta.get("model_type", ""))
    if isinstance(meta.get("config"), dict) and meta["config"].get("architecture") == "union":
        from adapterhub.io.adapters_lib_union import read_union_dir

        check_method(spec, "union", Path(directory))
        return read_union_dir(directory, spec, with_head=with_head)
    return read_adapters_lib_dir(directory, spec, with_head=with_head, model=model)

"""The `adapters` library's weight names on a model with two layer stacks whose module paths it names per stack
(CLIPModel: ``text_model.encoder.layers.<j>`` and ``vision_model.encoder.layers.<j>``; Whisper: ``encoder.layers.<j>``
and ``decoder.layers.<j>``), each ``j`` counted within its own stack. It numbers the layers globally (first stack
``0..T-1``, then the second ``T..``), as we do, but its weight names keep each stack's path and local index. Our
readers and writers of that layout work on one layer path with global indices (``ArchitectureSpec.adapters_lib_layers``),
so these functions translate the names on the way in (``to_one_path``) and out (``to_stack_paths``); ``T`` is the
first stack's length (``ModelInfo.decoder_start``).

Only bottleneck adapters and LoRA go through this translation (``STACKED_ARCHITECTURES``), and on an encoder-decoder
(Whisper) prefix tuning too (``adapterhub.io.adapters_lib_prefix_encdec``, which names both stacks itself); the
other methods of that layout are refused on such models by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.spec.architectures import ArchitectureSpec

# their ``config.architecture`` values that read and write on a two-stack model (LoRA: additive, not (IA)³)
STACKED_ARCHITECTURES = ("bottleneck", "lora")
# and on an encoder-decoder (a second stack with cross-attention)
ENCODER_DECODER_ARCHITECTURES = ("prefix_tuning",)


def has_stack_paths(spec: ArchitectureSpec) -> bool:
    """Whether ``spec`` has a second stack that the `adapters` library names by its own path (CLIPModel)."""
    return spec.decoder is not None and bool(spec.decoder.adapters_lib_layers)


def peft_layout_maps(spec: ArchitectureSpec) -> bool:
    """Whether peft's layout (full module paths) is mapped for ``spec``: single stacks and encoder-decoders (their
    decoder has cross-attention: T5, BART, Whisper), not a second tower (CLIPModel)."""
    return spec.decoder is None or spec.decoder.cross_attention is not None


def check_method(spec: ArchitectureSpec, architecture: str, where: Path | str) -> None:
    """Refuse a method of that layout the stack translation does not cover, naming the ones it does."""
    if not has_stack_paths(spec):
        return
    assert spec.decoder is not None
    allowed = STACKED_ARCHITECTURES + (ENCODER_DECODER_ARCHITECTURES if spec.decoder.cross_attention else ())
    if architecture not in allowed:
        names = (
            "bottleneck adapters, LoRA and prefix tuning"
            if len(allowed) > 2
            else "bottleneck adapters and LoRA"
        )
        raise ConfigError(
            f"{where}: the `adapters` layout of {spec.model_types[0]} models (two layer stacks) is read and written "
            f"for {names} only, not {architecture!r}; use layout='adapterhub' for it."
        )


def _pattern(path: str) -> re.Pattern[str]:
    return re.compile(rf"^((?:.*\.)?){re.escape(path)}\.(\d+)\.(.*)$")


def to_one_path(
    raw: Mapping[str, torch.Tensor], spec: ArchitectureSpec, first_len: int | None, directory: Path
) -> dict[str, torch.Tensor]:
    """Their names -> one path with global indices: ``<second path>.<j>.`` becomes ``<first path>.<T + j>.``."""
    if not has_stack_paths(spec):
        return dict(raw)
    assert spec.decoder is not None
    second = _pattern(spec.decoder.adapters_lib_layers)
    if first_len is None:
        raise AdapterFileError(
            f"{directory}: reading the `adapters` layout of a {spec.model_types[0]} model needs the model (the "
            "length of its first layer stack numbers the second's layers); load it with model.load_adapter(...)."
        )
    out: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        match = second.match(key)
        if match is not None:
            before, index, rest = match.groups()
            key = f"{before}{spec.adapters_lib_layers}.{first_len + int(index)}.{rest}"
        out[key] = tensor
    return out


def to_stack_paths(
    tensors: Mapping[str, torch.Tensor], spec: ArchitectureSpec, first_len: int
) -> dict[str, torch.Tensor]:
    """Our writers' names (one path, global indices) -> theirs: ``<first path>.<i>.`` with ``i >= T`` becomes
    ``<second path>.<i - T>.``."""
    if not has_stack_paths(spec):
        return dict(tensors)
    assert spec.decoder is not None
    first = _pattern(spec.adapters_lib_layers)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        match = first.match(key)
        if match is not None and int(match.group(2)) >= first_len:
            before, index, rest = match.groups()
            key = f"{before}{spec.decoder.adapters_lib_layers}.{int(index) - first_len}.{rest}"
        out[key] = tensor
    return out

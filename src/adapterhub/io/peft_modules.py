"""peft LoRA / DoRA files whose targets are not spec points alone: read and written as LoRA targeted by module
name (``LoRAConfig.target_modules``).

Reading: every ``base_model.model.<path>.lora_A.weight`` / ``lora_B.weight`` / ``lora_magnitude_vector`` becomes
``by_name.<path with ":">.<param>``; the config names exactly those paths in ``target_modules`` (what peft's
``target_modules``, ``exclude_modules`` and ``layers_to_transform`` selected) and keeps ``rank_pattern`` /
``alpha_pattern``, so each module gets the rank and alpha peft gave it. When the adapter is built, the paths that
are spec points of the model move to those points (``LoRAAdapter.adopt_tensors``).

``bias`` other than ``"none"``: the model's biases peft saved (``<path>.base_layer.bias`` of a target,
``<path>.bias`` of another module) become the adapter's held biases (``biases.<path with ":">``), except those of
``modules_to_save`` modules (their copies hold them); written back the same way. ``trainable_token_indices``: each
``<path>.token_adapter.trainable_tokens_delta`` ``(n, d)`` is the adapter's copy of those rows
(``tokens.<path with ":">``), the option kept as peft wrote it.

Writing: each target under its module path, ``target_modules`` the list of those full paths (peft matches a
listed name exactly), the patterns as configured.

An ``nn.MultiheadAttention`` target (``methods.lora_mha``): peft keeps its in_proj factors under the module's path
and its out_proj factors under ``<path>.base_layer.out_proj``; they read as the adapter's targets ``<path>`` and
``<path>.out_proj`` (only ``<path>`` in ``target_modules``: targeting it brings the out_proj) and are written
back under peft's names.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapterhub.errors import AdapterFileError
from adapterhub.io.peft_common import (
    PREFIX,
    TOKENS_SUFFIX,
    add_lora_extras,
    by_name_targets,
    lora_meta,
    module_tensors,
    write_peft_files,
)
from adapterhub.io.peft_keys import init_from_peft
from adapterhub.methods.lora_mha import OUT_PROJ
from adapterhub.runtime.records import AdapterRecord
from adapterhub.spec.architectures import ArchitectureSpec

_MHA_OUT = (
    f".base_layer.{OUT_PROJ}"  # peft's path of a MultiheadAttention target's out_proj, after the target's
)
_WEIGHT = re.compile(
    r"^(?P<path>.+)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.[^.]+)?(?:\.weight)?$"
)


def read_peft_modules(
    meta: Mapping[str, Any], raw: Mapping[str, torch.Tensor], directory: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(config, tensors, head tensors)`` of a peft LoRA directory, as LoRA targeted by module name."""
    tensors: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    bias = meta.get("bias") or "none"
    saved = tuple(meta.get("modules_to_save") or ())
    for key, tensor in raw.items():
        if not key.startswith(PREFIX):
            raise AdapterFileError(f"peft weight {key!r} in {directory} is not under {PREFIX!r}.")
        rest = key[len(PREFIX) :]
        if rest.endswith(TOKENS_SUFFIX):  # trainable_token_indices: the embedding's trained rows
            tensors[f"tokens.{rest[: -len(TOKENS_SUFFIX)].replace('.', ':')}"] = tensor
            continue
        if bias != "none" and (rest == "bias" or rest.endswith(".bias")):
            path = rest[: -len(".bias")].removesuffix(".base_layer")
            parts = path.split(".")
            if ".original_module." in rest or ".modules_to_save." in rest:
                continue  # peft's copies of a modules_to_save module's bias again (bias='all'): the copy has it
            if not any(".".join(parts[:i]).endswith(n) for n in saved for i in range(1, len(parts) + 1)):
                tensors[f"biases.{path.replace('.', ':')}"] = tensor  # option bias: the model's bias, trained
                continue
        match = _WEIGHT.match(rest)
        if match is None and key.endswith(".base_layer.weight"):
            # peft saves the whole embedding of an Embedding target too (save_embedding_layers), for models whose
            # vocabulary was resized: the model's own embedding is used (load into the model peft was saved from)
            continue
        if match is None:
            head[key[len(PREFIX) :]] = tensor  # modules_to_save
            continue
        path, which = match.group("path"), match.group("which")
        inner = path.endswith(_MHA_OUT)  # peft's out_proj of a MultiheadAttention target: part of that target
        if inner:
            path = path[: -len(_MHA_OUT)] + f".{OUT_PROJ}"
        param = {
            "lora_magnitude_vector": "magnitude",
            "lora_embedding_A": "lora_A",
            "lora_embedding_B": "lora_B",
        }.get(which, which)
        if inner and param == "lora_B":
            tensor = tensor * _mha_out_factor(meta, directory)  # peft <= 0.21 applies this update twice
        tensors[f"by_name.{path.replace('.', ':')}.{param}"] = tensor
        if not inner:
            paths.add(path)
    if not paths:
        raise AdapterFileError(f"{directory} holds no LoRA weights.")
    config: dict[str, Any] = {
        "method": "dora" if meta.get("use_dora") else "lora",
        "r": int(meta.get("r", 8)),
        "alpha": float(meta.get("lora_alpha", 8)),
        "dropout": float(meta.get("lora_dropout", 0.0)),
        "use_rslora": bool(meta.get("use_rslora", False)),
        "target_modules": sorted(paths),
        "rank_pattern": dict(meta.get("rank_pattern") or {}),
        "alpha_pattern": dict(meta.get("alpha_pattern") or {}),
    }
    config.update(init_from_peft(meta))
    if bias != "none":
        config["bias"] = bias
    if meta.get("trainable_token_indices"):
        config["trainable_token_indices"] = meta["trainable_token_indices"]
    return config, tensors, head


def write_peft_modules(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write a LoRA / DoRA record targeted by module name in peft's layout."""
    config = record.config
    out: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    attention = False  # a MultiheadAttention target was written (peft_version then says how to read it)

    def no_form(key: str) -> str:
        return f"Adapter {record.name!r} has a tensor {key!r} that peft's LoRA layout cannot hold."

    for path, param, tensor in module_tensors(record, spec, model, no_form):
        if isinstance(model.get_submodule(path), nn.Embedding):  # peft's names for an Embedding target
            name = {"lora_A": "lora_embedding_A", "lora_B": "lora_embedding_B"}[param]
        else:
            name = "lora_magnitude_vector" if param == "magnitude" else f"{param}.weight"
        parent, _, leaf = path.rpartition(".")
        if leaf == OUT_PROJ and isinstance(model.get_submodule(parent), nn.MultiheadAttention):
            # the out_proj update of a MultiheadAttention target: peft's key inside its wrapper, not a target
            half = tensor / _DOUBLED if param == "lora_B" else tensor  # peft 0.21 applies it twice
            out[f"{PREFIX}{parent}{_MHA_OUT}.{name}"] = half.detach().contiguous()
            attention = True
            continue
        out[f"{PREFIX}{path}.{name}"] = tensor.detach().contiguous()
        paths.add(path)
    extras = add_lora_extras(record, out, paths)
    transposed = any(type(model.get_submodule(p)).__name__ == "Conv1D" for p in paths)
    targeting = {
        **by_name_targets(paths),
        "rank_pattern": dict(config.get("rank_pattern") or {}),
        "alpha_pattern": dict(config.get("alpha_pattern") or {}),
    }
    meta = lora_meta(record, targeting, **extras, fan_in_fan_out=transposed)
    if attention:
        meta["peft_version"] = _DOUBLING_UNTIL  # the out_proj factors are written for peft's doubled update
    return write_peft_files(directory, out, meta)


def _mha_out_factor(meta: Mapping[str, Any], directory: Path) -> float:
    """What a MultiheadAttention target's out_proj ``lora_B`` from peft is multiplied by when read: peft up to
    0.21.2 (``peft_version``; absent: an older one) adds that update twice (its ``MultiheadAttention.merge`` writes
    ``W + ΔW`` and then lets the out_proj's own merge add ``ΔW`` again, in every forward and in
    ``merge_and_unload``: peft pull request 3774), so its adapter computes ``W + 2ΔW`` and is read as that. A newer
    peft may compute it either way, so its files are refused rather than guessed."""
    version = str(meta.get("peft_version") or _DOUBLING_UNTIL).partition("@")[0]
    if _version(version) > _version(_DOUBLING_UNTIL):
        raise AdapterFileError(
            f"The peft LoRA in {directory} adapts an nn.MultiheadAttention and was written by peft {version}; peft up "
            f"to {_DOUBLING_UNTIL} applies its out_proj update twice (which adapterhub reproduces when reading), and "
            "a newer peft may not. Load it with peft and save it again with peft 0.21, or re-train it with "
            "adapterhub."
        )
    return _DOUBLED


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


_DOUBLING_UNTIL = "0.21.2"  # the last peft known to add a MultiheadAttention's out_proj update twice
_DOUBLED = 2.0

"""Names and helpers shared by the readers and writers of peft's layouts (LoRA/DoRA ``peft_layout``, (IA)³, AdaLoRA,
LoHa/LoKr, OFT/BOFT, VeRA, LN tuning)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.io.files import read_json, write_json, write_tensors
from adapterhub.io.peft_keys import init_to_peft
from adapterhub.runtime.layers import get_layers
from adapterhub.runtime.modules import module_table
from adapterhub.runtime.records import AdapterRecord
from adapterhub.spec.architectures import ArchitectureSpec
from adapterhub.spec.factor_shapes import CONV_MODULES, conv_modules_json, read_conv_modules

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE, BIN_WEIGHTS_FILE = "adapter_model.safetensors", "adapter_model.bin"
PREFIX = "base_model.model."


def add_saved_tensors(record: AdapterRecord, out: dict[str, torch.Tensor]) -> list[str] | None:
    """The adapter's copies of modules (``saved.<path>.<param>``, ``modules_to_save``) and a static head's tensors
    into ``out`` under peft's names (``<path>.<param>``); returns peft's ``modules_to_save``, or None."""
    saved: set[str] = set()
    for key, tensor in record.tensors.items():
        if key.startswith("saved."):
            _, path, param = key.split(".", 2)
            out[f"{PREFIX}{path.replace(':', '.')}.{param}"] = tensor.detach().contiguous()
            saved.add(path.replace(":", "."))
    head = add_head_tensors(record, out, saved)
    names = sorted(saved | set(head or ()))
    return names or None


def add_bias_tensors(record: AdapterRecord, out: dict[str, torch.Tensor], targets: Iterable[str]) -> str:
    """The adapter's copies of biases (``biases.<path with ":">``, LoRA's option ``bias``) into ``out`` under
    peft's names: ``<path>.base_layer.bias`` for a module LoRA targets (peft wraps it; ``targets``: their paths),
    ``<path>.bias`` otherwise. Returns peft's ``bias`` value (``"none"`` without copies)."""
    wrapped = set(targets)
    for key, tensor in record.tensors.items():
        if key.startswith("biases."):
            path = key[len("biases.") :].replace(":", ".")
            name = f"{path}.base_layer.bias" if path in wrapped else f"{path}.bias"
            out[PREFIX + name] = tensor.detach().contiguous()
    return str(record.config.get("bias", "none"))


TOKENS_SUFFIX = ".token_adapter.trainable_tokens_delta"


def add_token_tensors(record: AdapterRecord, out: dict[str, torch.Tensor]) -> Any:
    """The adapter's copies of embedding rows (``tokens.<path with ":">``, LoRA's ``trainable_token_indices``) into
    ``out`` under peft's names (``<path>.token_adapter.trainable_tokens_delta``); returns peft's
    ``trainable_token_indices`` (the config's, or None)."""
    for key, tensor in record.tensors.items():
        if key.startswith("tokens."):
            out[PREFIX + key[len("tokens.") :].replace(":", ".") + TOKENS_SUFFIX] = (
                tensor.detach().contiguous()
            )
    return record.config.get("trainable_token_indices")


def add_head_tensors(
    record: AdapterRecord, out: dict[str, torch.Tensor], skip: set[str] | frozenset[str] = frozenset()
) -> list[str] | None:
    """A static head's tensors into ``out`` (peft's ``modules_to_save``), except those of modules in ``skip`` (the
    adapter's own copies of them win); returns those modules, or None."""
    if record.head is None:
        return None
    if record.head.head_type != "static":
        raise ConfigError(
            f"Adapter {record.name!r} has an adapterhub {record.head.head_type} head, which peft cannot hold "
            "(peft saves the model's own head through modules_to_save). Pass with_head=False."
        )
    kept = {
        key: tensor
        for key, tensor in record.head.tensors.items()
        if not any(key.startswith(path + ".") for path in skip)
    }
    for key, tensor in kept.items():
        out[PREFIX + key] = tensor.detach().contiguous()
    return sorted({key.rsplit(".", 1)[0] for key in kept}) or None


def layers_path(model: nn.Module, spec: ArchitectureSpec) -> str:
    layers = get_layers(model, spec)
    return next(name for name, module in model.named_modules() if module is layers)


def module_regex(spec: ArchitectureSpec, modules: Iterable[str], layers: Iterable[int]) -> str:
    """A ``target_modules`` regex (peft matches it against whole module names) for exactly these projections of
    these layers: anchored at the layer list, so that ``output.dense`` cannot also match
    ``attention.output.dense`` the way a suffix list would."""
    names = "|".join(re.escape(m) for m in sorted(set(modules)))
    indices = "|".join(str(i) for i in sorted(set(layers)))
    return rf"(?:.*\.)?{re.escape(spec.layers)}\.(?:{indices})\.(?:{names})"


def module_param(key: str, points: Mapping[tuple[int, str], str]) -> tuple[str, str] | None:
    """``(module path, parameter)`` of a record tensor targeted by module name (``by_name.<path with ":">.<param>``)
    or at a spec point that is a whole module (``layers.<i>.<point>.<param>``; ``points``: ``(layer, point) ->
    path`` of the model's whole-module points, encoder and decoder layers alike); None for any other key."""
    parts = key.split(".")
    if parts[0] == "by_name" and len(parts) == 3:
        return parts[1].replace(":", "."), parts[2]
    if parts[0] == "layers" and len(parts) == 4 and (int(parts[1]), parts[2]) in points:
        return points[(int(parts[1]), parts[2])], parts[3]
    return None


def point_paths(model: nn.Module, spec: ArchitectureSpec) -> dict[tuple[int, str], str]:
    """``(layer, point) -> module path`` of every spec point that is a whole (unfused) module of ``model``."""
    return {
        (m.layer, m.point): m.path
        for m in module_table(model, spec)
        if m.point is not None and m.layer is not None
    }


def module_tensors(
    record: AdapterRecord,
    spec: ArchitectureSpec,
    model: nn.Module,
    no_form: Callable[[str], str],
    skip: Iterable[str] = (),
) -> Iterator[tuple[str, str, torch.Tensor]]:
    """``(module path, parameter, tensor)`` of each record tensor on a whole module (:func:`module_param`), for the
    writers of peft's by-module layouts; ``modules_to_save`` tensors (``saved.``) and the ``skip`` keys are left
    out, and so are held biases (``biases.``) and token rows (``tokens.``). A tensor with no such form (a slice of a fused projection) raises ``ConfigError(no_form(key))``."""
    points = point_paths(model, spec) if any(k.startswith("layers.") for k in record.tensors) else {}
    left_out = set(skip)
    for key, tensor in record.tensors.items():
        if key.startswith(("saved.", "biases.", "tokens.")) or key in left_out:
            continue  # modules_to_save, bias, trainable_token_indices: add_saved/bias/token_tensors write them
        found = module_param(key, points)
        if found is None:
            raise ConfigError(no_form(key))
        yield found[0], found[1], tensor


def module_weights(
    raw: Mapping[str, torch.Tensor], pattern: re.Pattern[str], directory: Path
) -> tuple[list[tuple[str, str, str, torch.Tensor]], dict[str, torch.Tensor]]:
    """Split a peft file's weights targeted by module name: ``(key, module path, param, tensor)`` for every key
    under :data:`PREFIX` whose rest ``pattern`` matches (groups ``path`` and ``param``), and the other keys under
    it (``modules_to_save`` copies, heads) by their rest. A key outside :data:`PREFIX` raises
    :class:`AdapterFileError`."""
    matched: list[tuple[str, str, str, torch.Tensor]] = []
    rest: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        if not key.startswith(PREFIX):
            raise AdapterFileError(f"peft weight {key!r} in {directory} is not under {PREFIX!r}.")
        match = pattern.match(key[len(PREFIX) :])
        if match is None:
            rest[key[len(PREFIX) :]] = tensor
        else:
            matched.append((key, match.group("path"), match.group("param"), tensor))
    return matched, rest


def split_rows(key: str, tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    """The equal row blocks of a fused module's weight, one per part (q, k, v of GPT-2's ``c_attn``)."""
    if tensor.shape[0] % parts:
        raise AdapterFileError(f"peft weight {key!r} has {tensor.shape[0]} rows, not divisible by {parts}.")
    return [block.clone() for block in tensor.split(tensor.shape[0] // parts, dim=0)]


def peft_meta(
    peft_type: str, record: AdapterRecord, fields: Mapping[str, Any], version: str | None = None
) -> dict[str, Any]:
    """peft's ``adapter_config.json`` for ``record``: the keys every writer writes (``peft_type``, ``task_type``
    None, ``base_model_name_or_path`` the record's model name or None, ``inference_mode`` True, and
    ``peft_version`` when given) with the writer's own ``fields``."""
    meta: dict[str, Any] = {
        "peft_type": peft_type,
        "task_type": None,
        "base_model_name_or_path": record.model.model_name or None,
        **fields,
        "inference_mode": True,
    }
    if version is not None:
        meta["peft_version"] = version
    return meta


def by_name_targets(paths: Iterable[str], *, exclude: bool = True, layers: bool = True) -> dict[str, Any]:
    """The targeting keys of a writer by module name: ``target_modules`` the sorted full module paths, and peft's
    other selectors None, since the paths say which modules and layers (``exclude_modules`` where ``exclude``;
    ``layers_to_transform`` / ``layers_pattern`` where ``layers``; a peft type without one of them leaves it out)."""
    out: dict[str, Any] = {"target_modules": sorted(paths)}
    if exclude:
        out["exclude_modules"] = None
    if layers:
        out["layers_to_transform"] = None
        out["layers_pattern"] = None
    return out


def add_lora_extras(
    record: AdapterRecord, out: dict[str, torch.Tensor], wrapped: Iterable[str]
) -> dict[str, Any]:
    """A LoRA / DoRA record's copies of modules, biases and embedding rows into ``out`` (``add_saved_tensors``,
    ``add_bias_tensors`` with ``wrapped`` the target paths, ``add_token_tensors``, in that order); returns their
    ``lora_meta`` keywords (``modules_to_save``, ``bias``, ``tokens``)."""
    modules_to_save = add_saved_tensors(record, out)
    bias = add_bias_tensors(record, out, wrapped)
    tokens = add_token_tensors(record, out)
    return {"modules_to_save": modules_to_save, "bias": bias, "tokens": tokens}


def lora_meta(
    record: AdapterRecord,
    targets: Mapping[str, Any],
    *,
    bias: str,
    tokens: Any,
    modules_to_save: list[str] | None,
    fan_in_fan_out: bool,
) -> dict[str, Any]:
    """peft's ``LORA`` config for a LoRA / DoRA record, by spec point or by module name alike: ``targets`` the
    targeting keys (``target_modules`` ... ``rank_pattern``, ``alpha_pattern``), then ``r``, ``lora_alpha``,
    ``lora_dropout``, ``use_rslora``, ``use_dora`` (method ``dora``), ``bias`` / ``trainable_token_indices`` /
    ``modules_to_save`` as ``add_lora_extras`` returned them, and ``init_lora_weights`` (``init_to_peft``)."""
    config = record.config
    fields = {
        "r": config["r"],
        "lora_alpha": config["alpha"],
        "lora_dropout": config["dropout"],
        "use_rslora": bool(config.get("use_rslora", False)),
        **targets,
        "bias": bias,
        "use_dora": config.get("method") == "dora",
        "fan_in_fan_out": fan_in_fan_out,
        "modules_to_save": modules_to_save,
        **init_to_peft(config),
        "trainable_token_indices": tokens,
    }
    return peft_meta("LORA", record, fields)


def write_peft_files(
    directory: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
    """Write peft's two files (``adapter_model.safetensors``, ``adapter_config.json``) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_tensors(directory / WEIGHTS_FILE, tensors)
    write_json(directory / CONFIG_FILE, meta)
    return directory


CONV_FILE = "adapterhub_conv_modules.json"  # beside peft's files: the Conv2d targets' c_in and kernel


def write_conv_modules(directory: Path, conv: Mapping[str, tuple[int, tuple[int, ...]]]) -> None:
    """``{"conv_modules": {path: {"in_channels", "kernel_size"}}}`` into ``CONV_FILE`` (removed when ``conv`` is
    empty): what a peft LoHa's / LoKr's flattened convolution factors do not say (``spec.factor_shapes``)."""
    if conv:
        write_json(directory / CONV_FILE, {CONV_MODULES: conv_modules_json(conv)})
    else:
        (directory / CONV_FILE).unlink(missing_ok=True)


def read_conv_modules_file(directory: Path) -> dict[str, tuple[int, tuple[int, ...]]]:
    """The declared convolutions of a peft folder (``CONV_FILE``; absent: none)."""
    path = directory / CONV_FILE
    if not path.exists():
        return {}
    return read_conv_modules(read_json(path).get(CONV_MODULES), str(path))

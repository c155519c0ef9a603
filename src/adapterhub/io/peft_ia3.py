"""(IA)³ in peft's layout (``"peft_type": "IA3"``), both ways.

peft puts one vector ``ia3_l`` on each adapted module: ``(d_out, 1)`` scales the module's output, except for the
modules also listed in ``feedforward_modules``, whose ``(1, d_in)`` vector scales the input. That is our
``layers.<i>.out_<point>`` / ``layers.<i>.in_<point>`` (``targets`` / ``input_targets``). GPT-2's fused ``c_attn``
(q, k, v): an output vector is split into its q, k, v row blocks, an input vector is copied to all three. Writing
fills an untargeted block of a fused output with ones (exact: a vector of ones scales nothing) and refuses input
scaling that differs between the parts of a fused module, or a projection scaled on both sides (peft holds one
vector per module).

A file that scales modules that are no spec projections (BERT's ``pooler.dense``) or different ones per layer
reads as (IA)³ targeted by module name (``target_modules`` / ``feedforward_modules`` the paths, vectors
``by_name.<out|in>_<path with ":">``); such an adapter is written back under its module paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.io.peft_common import (
    PREFIX,
    add_head_tensors,
    by_name_targets,
    layers_path,
    module_regex,
    module_weights,
    peft_meta,
    split_rows,
    write_peft_files,
)
from adapterhub.runtime.layers import get_layers
from adapterhub.runtime.records import AdapterRecord, ModelInfo
from adapterhub.spec.architectures import ArchitectureSpec

_NEUTRAL: dict[str, tuple[Any, ...]] = {"target_parameters": (None, [])}


def _parts(spec: ArchitectureSpec) -> dict[str, list[str]]:
    by_module: dict[str, list[str]] = {}
    for point, linear in spec.linears.items():
        by_module.setdefault(linear.module, []).append(point)
    return {m: sorted(ps, key=lambda p: spec.linears[p].part or (0, 1)) for m, ps in by_module.items()}


def read_peft_ia3(
    meta: Mapping[str, Any],
    raw: Mapping[str, torch.Tensor],
    spec: ArchitectureSpec,
    directory: Path,
    model: ModelInfo | None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """peft (IA)³ config + weights -> our config dict, tensors and ``modules_to_save`` tensors."""
    for option, neutral in _NEUTRAL.items():
        if meta.get(option) not in neutral:
            raise ConfigError(
                f"The peft adapter in {directory} sets {option}={meta[option]!r}; adapterhub cannot represent it."
            )
    by_module = _parts(spec)
    modules = "|".join(re.escape(m) for m in sorted(by_module, key=len, reverse=True))
    pattern = re.compile(rf"^(?:.*\.)?{re.escape(spec.layers)}\.(\d+)\.({modules})\.ia3_l(?:\.[^.]+)?$")
    tensors: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    if spec.decoder is None and _needs_by_name(raw, pattern):
        return _read_by_name(meta, raw, directory)
    for key, tensor in raw.items():
        match = pattern.match(key)
        if match is None:
            if "ia3_l" in key:
                raise ConfigError(
                    f"peft weight {key!r} scales a module that is not one of the {spec.model_types[0]} projections "
                    f"adapterhub can hold ({', '.join(f'{p}={lin.module}' for p, lin in spec.linears.items())})."
                )
            if not key.startswith(PREFIX):
                raise AdapterFileError(f"peft weight {key!r} in {directory} is not under {PREFIX!r}.")
            head[key[len(PREFIX) :]] = tensor
            continue
        layer, module = match.groups()
        if tensor.dim() != 2 or 1 not in tensor.shape:
            raise AdapterFileError(
                f"peft weight {key!r} has shape {tuple(tensor.shape)}; expected (d, 1) or (1, d)."
            )
        points = by_module[module]
        if (tensor.shape[0] == 1 and tensor.shape[1] != 1) or (
            tensor.shape == (1, 1) and _is_ff(module, meta)
        ):
            for point in points:  # input scaling: shared by all parts of a fused module
                tensors[f"layers.{layer}.in_{point}"] = tensor.reshape(-1).clone()
            continue
        for point, block in zip(points, split_rows(key, tensor.reshape(-1), len(points)), strict=True):
            tensors[f"layers.{layer}.out_{point}"] = block
    if not tensors:
        raise AdapterFileError(f"{directory} holds no (IA)³ weights for a {spec.model_types[0]} model.")
    found: dict[int, set[str]] = {}
    for key in tensors:
        found.setdefault(int(key.split(".")[1]), set()).add(key.split(".")[2])
    every = set().union(*found.values())
    uneven = {i: sorted(v) for i, v in found.items() if v != every}
    if uneven:
        raise ConfigError(
            f"The peft adapter in {directory} scales different projections in different layers ({uneven}); "
            "adapterhub's (IA)³ has the same targets in every adapted layer."
        )
    order = list(spec.linears).index
    num_layers = model.num_layers if model is not None and model.num_layers else max(found) + 1
    config = {
        "method": "ia3",
        "targets": sorted((k[4:] for k in every if k.startswith("out_")), key=order),
        "input_targets": sorted((k[3:] for k in every if k.startswith("in_")), key=order),
        "leave_out": [i for i in range(num_layers) if i not in found],
    }
    return config, tensors, head


def _needs_by_name(raw: Mapping[str, torch.Tensor], pattern: re.Pattern[str]) -> bool:
    """Whether a peft (IA)³ file scales a module that is no spec projection, or different ones per layer."""
    found: dict[str, set[str]] = {}
    for key in raw:
        if "ia3_l" not in key:
            continue
        match = pattern.match(key)
        if match is None:
            return True
        found.setdefault(match.group(1), set()).add(match.group(2))
    return len({frozenset(modules) for modules in found.values()}) > 1


def _read_by_name(
    meta: Mapping[str, Any], raw: Mapping[str, torch.Tensor], directory: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A peft (IA)³ file as (IA)³ targeted by module name: ``<path>.ia3_l`` ``(d, 1)`` -> ``by_name.out_<path>``,
    ``(1, d)`` -> ``by_name.in_<path>`` (path with ":"); ``target_modules`` / ``feedforward_modules`` the paths."""
    tensors: dict[str, torch.Tensor] = {}
    paths: list[str] = []
    inputs: list[str] = []
    weights, head = module_weights(raw, _BY_NAME, directory)  # head: modules_to_save
    for key, path, _param, tensor in weights:
        if tensor.dim() != 2 or 1 not in tensor.shape:
            raise AdapterFileError(
                f"peft weight {key!r} has shape {tuple(tensor.shape)}; expected (d, 1) or (1, d)."
            )
        side = "in" if tensor.shape[0] == 1 and (tensor.shape[1] != 1 or _is_ff(path, meta)) else "out"
        tensors[f"by_name.{side}_{path.replace('.', ':')}"] = tensor.reshape(-1).clone()
        paths.append(path)
        if side == "in":
            inputs.append(path)
    if not tensors:
        raise AdapterFileError(f"{directory} holds no (IA)³ weights.")
    config: dict[str, Any] = {"method": "ia3", "target_modules": sorted(paths)}
    if inputs:
        config["feedforward_modules"] = sorted(inputs)
    return config, tensors, head


_BY_NAME = re.compile(r"^(?P<path>.+)\.(?P<param>ia3_l)(?:\.[^.]+)?$")


def _write_by_name(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """An (IA)³ record targeted by module name in peft's layout: each vector under its module path (output
    ``(d_out, 1)``, input ``(1, d_in)``), ``target_modules`` / ``feedforward_modules`` those full paths."""
    out: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    inputs: set[str] = set()
    prefix = layers_path(model, spec) if any(k.startswith("layers.") for k in record.tensors) else ""
    for key, tensor in record.tensors.items():
        parts = key.split(".")
        side, _, name = parts[-1].partition("_")
        if parts[0] == "by_name" and len(parts) == 2:
            path = name.replace(":", ".")
        elif parts[0] == "layers" and len(parts) == 3 and spec.linears[name].part is None:
            path = f"{prefix}.{parts[1]}.{spec.linears[name].module}"
        else:
            raise ConfigError(
                f"Adapter {record.name!r} has a tensor {key!r} that peft's (IA)³ layout cannot hold."
            )
        shape = (1, -1) if side == "in" else (-1, 1)
        out[f"{PREFIX}{path}.ia3_l"] = tensor.detach().reshape(shape).contiguous()
        paths.add(path)
        if side == "in":
            inputs.add(path)
    modules_to_save = add_head_tensors(record, out)
    fields = {
        **by_name_targets(paths, exclude=False, layers=False),
        "feedforward_modules": sorted(inputs),
        "fan_in_fan_out": any(type(model.get_submodule(p)).__name__ == "Conv1D" for p in paths),
        "modules_to_save": modules_to_save,
        "init_ia3_weights": True,
    }
    return write_peft_files(directory, out, peft_meta("IA3", record, fields))


def _is_ff(module: str, meta: Mapping[str, Any]) -> bool:
    ff = meta.get("feedforward_modules") or []
    if isinstance(ff, str):
        return re.fullmatch(ff, module) is not None
    return any(module == m or module.endswith("." + m) for m in ff)


def write_peft_ia3(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write an (IA)³ record so that ``peft.PeftModel.from_pretrained(base, directory)`` computes what we do."""
    config = record.config
    if config.get("target_modules") is not None:
        return _write_by_name(record, directory, spec, model)
    both = set(config["targets"]) & set(config["input_targets"])
    if both:
        raise ConfigError(
            f"(IA)³ adapter {record.name!r} scales both the input and the output of {sorted(both)}; peft holds one "
            "vector per module. Use layout='adapterhub'."
        )
    by_module = _parts(spec)
    path = layers_path(model, spec)
    out: dict[str, torch.Tensor] = {}
    target_modules: set[str] = set()
    ff_modules: set[str] = set()
    layer_keys = sorted({int(k.split(".")[1]) for k in record.tensors})
    for layer in layer_keys:
        for module, parts in by_module.items():
            outs = [record.tensors.get(f"layers.{layer}.out_{p}") for p in parts]
            ins = [record.tensors.get(f"layers.{layer}.in_{p}") for p in parts]
            base = f"{PREFIX}{path}.{layer}.{module}.ia3_l"
            if any(t is not None for t in outs) and any(t is not None for t in ins):
                raise ConfigError(
                    f"(IA)³ adapter {record.name!r} scales input and output of the fused module {module!r}; peft "
                    "holds one vector per module. Use layout='adapterhub'."
                )
            if any(t is not None for t in outs):
                widths = [spec_width(t, outs) for t in outs]
                full = [t if t is not None else torch.ones(w) for t, w in zip(outs, widths, strict=True)]
                out[base] = torch.cat([t.detach() for t in full]).reshape(-1, 1).contiguous()
                target_modules.add(module)
            elif any(t is not None for t in ins):
                first = ins[0]
                if first is None or any(t is None or not torch.equal(t, first) for t in ins):
                    raise ConfigError(
                        f"(IA)³ adapter {record.name!r} scales the input of only some of {parts} (fused module "
                        f"{module!r}, which peft scales as one). Use layout='adapterhub'."
                    )
                out[base] = first.detach().reshape(1, -1).contiguous()
                target_modules.add(module)
                ff_modules.add(module)
    modules_to_save = add_head_tensors(record, out)
    num_layers = len(get_layers(model, spec))
    leave_out = set(config.get("leave_out", []))
    kept = [i for i in range(num_layers) if i not in leave_out]
    fields = {
        "target_modules": module_regex(spec, target_modules, kept),  # the kept layers are in the regex
        "feedforward_modules": module_regex(spec, ff_modules, kept) if ff_modules else [],
        "fan_in_fan_out": any(spec.linears[p].transposed for ps in by_module.values() for p in ps),
        "modules_to_save": modules_to_save,
        "init_ia3_weights": True,
    }
    return write_peft_files(directory, out, peft_meta("IA3", record, fields))


def spec_width(tensor: torch.Tensor | None, siblings: list[torch.Tensor | None]) -> int:
    """The width of a fused block: its own, or (untargeted) that of a targeted sibling (q, k, v are equal on the
    fused modules we know)."""
    if tensor is not None:
        return int(tensor.shape[0])
    return int(next(t for t in siblings if t is not None).shape[0])

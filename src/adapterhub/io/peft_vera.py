"""peft VeRA files (``"peft_type": "VERA"``), read and written as our ``vera`` targeted by module name.

peft's weights: the vectors on the adapted modules under our parameter names, ``base_model.model.<path>.
vera_lambda_b`` ``(d_out,)`` and ``vera_lambda_d`` ``(r,)``; the shared projections, when ``save_projection`` is
true, at ``base_model.vera_A`` ``(r, max d_in)`` and ``base_model.vera_B`` ``(max d_out, r)``.

Reading: each vector becomes ``by_name.<path with ":">.<param>``, the projections ``vera_A`` / ``vera_B``;
``target_modules`` names exactly the paths found (what peft's ``target_modules`` / ``layers_to_transform``
selected, so ``A`` / ``B`` are sized over the same modules), the other options are kept. When the adapter is built,
paths that are spec points of the model move there (``LoRAAdapter.adopt_tensors``). Tensors of no adapted module
are ``modules_to_save`` copies (or a static head), as for LoRA. A file that says ``save_projection: true`` without
the projections is refused (as peft refuses it). One that holds them while saying ``save_projection: false`` loads
as peft does, from the key: accepted when the saved matrices are the key's, refused otherwise (peft would silently
use other matrices than the ones saved).

Writing (refused for the `adapters` library's variant, ``lambda_form="matrix"`` or ``scaling`` other than 1):
each target under its module path (a spec point through the spec's module name; slices of GPT-2's fused
``c_attn`` have no peft form and are refused), ``target_modules`` the list of those full paths, the projections
under peft's names when ``save_projection``.
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
    add_saved_tensors,
    by_name_targets,
    module_tensors,
    module_weights,
    peft_meta,
    write_peft_files,
)
from adapterhub.methods.vera import shared_projections
from adapterhub.runtime.records import AdapterRecord
from adapterhub.spec.architectures import ArchitectureSpec

_WEIGHT = re.compile(r"^(?P<path>.+)\.(?P<param>vera_lambda_[bd])$")
_PROJECTIONS = {"base_model.vera_A": "vera_A", "base_model.vera_B": "vera_B"}
# peft's VeraConfig options kept in our config (the targets are read from the weights), with peft's defaults
_OPTIONS: dict[str, Any] = {
    "r": 256,
    "projection_prng_key": 0,
    "save_projection": True,
    "vera_dropout": 0.0,
    "d_initial": 0.1,
    "init_weights": True,
}


def read_peft_vera(
    meta: Mapping[str, Any], raw: Mapping[str, torch.Tensor], directory: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(config, tensors, head tensors)`` of a peft VeRA directory, targeted by module name."""
    tensors: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    for key, tensor in raw.items():
        if key in _PROJECTIONS:
            tensors[_PROJECTIONS[key]] = tensor
    lambdas = {key: tensor for key, tensor in raw.items() if key not in _PROJECTIONS}
    weights, head = module_weights(lambdas, _WEIGHT, directory)  # head: modules_to_save
    for _, path, param, tensor in weights:
        tensors[f"by_name.{path.replace('.', ':')}.{param}"] = tensor
        paths.add(path)
    if not paths:
        raise AdapterFileError(f"{directory} holds no VeRA weights (vera_lambda_b / vera_lambda_d).")
    config: dict[str, Any] = {"method": "vera", "target_modules": sorted(paths)}
    for option, default in _OPTIONS.items():
        config[option] = meta[option] if meta.get(option) is not None else default
    _check_projections(config, tensors, directory)
    return config, tensors, head


def _check_projections(config: dict[str, Any], tensors: dict[str, torch.Tensor], directory: Path) -> None:
    saved = [name for name in ("vera_A", "vera_B") if name in tensors]
    if config["save_projection"]:
        if len(saved) < 2:
            raise AdapterFileError(
                f"The peft VeRA adapter in {directory} says save_projection=true but its weights lack "
                f"{' and '.join(sorted({'vera_A', 'vera_B'} - set(saved)))} (base_model.vera_A / base_model.vera_B); "
                "peft refuses it too. Save it again from the model, or set save_projection=false in its "
                "adapter_config.json to regenerate them from projection_prng_key."
            )
        return
    if not saved:
        return
    if len(saved) == 2:
        a, b = tensors["vera_A"], tensors["vera_B"]
        fresh = shared_projections(int(config["projection_prng_key"]), a.shape[0], a.shape[1], b.shape[0])
        if torch.equal(a.float(), fresh[0]) and torch.equal(b.float(), fresh[1]):
            del tensors["vera_A"], tensors["vera_B"]  # the key's own matrices: regenerated when loaded
            return
    raise ConfigError(
        f"The peft VeRA adapter in {directory} holds vera_A / vera_B that projection_prng_key="
        f"{config['projection_prng_key']} does not generate, but says save_projection=false, so peft would ignore "
        "them and use the key's. Set save_projection=true in its adapter_config.json to use the saved matrices."
    )


def write_peft_vera(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write a VeRA record in peft's layout (``PeftModel.from_pretrained`` computes what we do). The `adapters`
    library's variant (``lambda_form="matrix"``, ``scaling`` other than 1, ``use_gating``, ``use_dora``) has no peft form and is
    refused."""
    config = record.config
    for key, what in (("use_gating", "gated VeRA"), ("use_dora", "DVoRA")):
        if config.get(key):
            raise ConfigError(
                f"Adapter {record.name!r} is {what} ({key}, the `adapters` library's); peft's VeRA has neither a gate "
                "nor a magnitude, so it has no peft form. Save it with layout='adapters' or 'adapterhub'."
            )
    if config.get("lambda_form", "vector") != "vector" or float(config.get("scaling", 1.0)) != 1.0:
        raise ConfigError(
            f"Adapter {record.name!r} is the `adapters` library's VeRA (lambda_form="
            f"{config.get('lambda_form', 'vector')!r}, scaling={config.get('scaling', 1.0)!r}); peft's VeRA trains "
            "vectors with no scaling, so it has no peft form. Save it with layout='adapters' or 'adapterhub'."
        )
    out: dict[str, torch.Tensor] = {
        f"base_model.{key}": record.tensors[key].detach().contiguous()
        for key in ("vera_A", "vera_B")
        if key in record.tensors
    }  # the shared projections (save_projection)
    paths: set[str] = set()
    transposed = False

    def no_form(key: str) -> str:
        return (
            f"Adapter {record.name!r} has VeRA on a slice of a fused projection ({key!r}); peft puts one VeRA "
            "on a whole module, so this adapter has no peft form. Target the module by name (target_modules) "
            "or use layout='adapterhub'."
        )

    for path, param, tensor in module_tensors(record, spec, model, no_form, skip=("vera_A", "vera_B")):
        module = model.get_submodule(path)
        is_conv1d = type(module).__name__ == "Conv1D"
        if not (isinstance(module, nn.Linear) or is_conv1d):
            raise ConfigError(
                f"Adapter {record.name!r} adapts {path!r}, a {type(module).__name__}; peft's VeRA adapts nn.Linear "
                "and Conv1D only, so this adapter has no peft form. Use layout='adapterhub'."
            )
        transposed = transposed or is_conv1d
        out[f"{PREFIX}{path}.{param}"] = tensor.detach().contiguous()
        paths.add(path)
    modules_to_save = add_saved_tensors(record, out)
    fields = {
        **{option: config.get(option, default) for option, default in _OPTIONS.items()},
        **by_name_targets(paths, exclude=False),
        "fan_in_fan_out": transposed,
        "bias": "none",
        "modules_to_save": modules_to_save,
    }
    return write_peft_files(directory, out, peft_meta("VERA", record, fields))

"""peft LoHa / LoKr files (``"peft_type": "LOHA"`` / ``"LOKR"``), read and written as our ``loha`` / ``lokr``
targeted by module name.

peft's weights sit on the adapted modules under our parameter names: ``base_model.model.<path>.hada_w1_a``
``(d_out, r)``, ``hada_w1_b``, ``hada_w2_a``, ``hada_w2_b`` (LoHa); ``<path>.lokr_w1`` or ``lokr_w1_a`` / ``lokr_w1_b``,
and ``lokr_w2`` or ``lokr_w2_a`` / ``lokr_w2_b`` (LoKr; which ones exist follows from ``r``, the widths and
``decompose_both`` / ``decompose_factor`` by the same rule on both sides).

Reading: each becomes ``by_name.<path with ":">.<param>``; ``target_modules`` names exactly the paths found (what
peft's ``target_modules`` / ``exclude_modules`` / ``layers_to_transform`` selected), ``rank_pattern`` /
``alpha_pattern`` and the other options are kept, so every module gets peft's rank, alpha and factors. When the
adapter is built, paths that are spec points of the model move there (``LoRAAdapter.adopt_tensors``). Tensors of
no adapted module are ``modules_to_save`` copies (or a static head), as for LoRA. Convolution factors
on ``nn.Conv2d`` / ``nn.Conv1d`` are those of the flattened kernel (``use_effective_conv2d=False``, or a 1×1 / 1
kernel), LoKr's full ``lokr_w2 (b, d, kh, kw)`` / ``(b, d, k)``, or with ``use_effective_conv2d=True`` on a larger
kernel peft's CP decomposition: ``hada_t1`` / ``hada_t2`` ``(r, r, kh, kw)`` (a Conv1d: ``(r, r, k, 1)``) with
``hada_w*_a (r, c_out)`` and ``hada_w*_b (r, c_in)`` (LoHa), ``lokr_t2`` likewise with ``lokr_w2_a (r, b)`` and
``lokr_w2_b (r, d)`` (LoKr, when ``W2`` is factored), under the same names both ways.

Writing: each target under its module path (a spec point through the spec's module name; the fused projections of
GPT-2's ``c_attn`` have no peft form and are refused), ``target_modules`` the list of those full paths. The
``nn.Conv2d`` / ``nn.Conv1d`` targets' input channels and kernel, which the flattened factors do not say, go into
``adapterhub_conv_modules.json`` beside peft's files (peft ignores it; ``inspect_adapter_dir`` and the hub read it):
a folder peft wrote itself lacks it, so its LoHa factors (and a factored LoKr's) read as a linear update of the
flattened width (the model says which when it is loaded; the full check reads a LoKr split that is not a linear
layer's as a convolution's, ``LoKrLayer.flattened_conv_from``). CP-decomposed kernels say the convolution.
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
    write_conv_modules,
    write_peft_files,
)
from adapterhub.runtime.records import AdapterRecord
from adapterhub.spec.architectures import ArchitectureSpec

METHODS = {"LOHA": "loha", "LOKR": "lokr"}
PEFT_TYPES = {method: peft_type for peft_type, method in METHODS.items()}
_WEIGHT = re.compile(r"^(?P<path>.+)\.(?P<param>hada_w[12]_[ab]|hada_t[12]|lokr_w[12](?:_[ab])?|lokr_t2)$")
# the options written to peft's adapter_config.json besides the targets, per method
_OPTIONS = {
    "loha": ("r", "alpha", "rank_dropout", "module_dropout", "use_effective_conv2d", "init_weights"),
    "lokr": (
        "r",
        "alpha",
        "rank_dropout",
        "module_dropout",
        "use_effective_conv2d",
        "init_weights",
        "decompose_both",
        "decompose_factor",
        "rank_dropout_scale",
    ),
}


def read_peft_lycoris(
    meta: Mapping[str, Any], raw: Mapping[str, torch.Tensor], directory: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(config, tensors, head tensors)`` of a peft LoHa / LoKr directory, targeted by module name."""
    method = METHODS[str(meta["peft_type"])]
    tensors: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    weights, head = module_weights(raw, _WEIGHT, directory)  # head: modules_to_save
    for _key, path, param, tensor in weights:
        tensors[f"by_name.{path.replace('.', ':')}.{param}"] = tensor
        paths.add(path)
    if not tensors:
        raise AdapterFileError(f"{directory} holds no {meta['peft_type']} weights.")
    config: dict[str, Any] = {"method": method, "target_modules": sorted(paths)}
    defaults = {"r": 8, "alpha": 8, "rank_dropout": 0.0, "module_dropout": 0.0, "init_weights": True}
    for option in _OPTIONS[method]:
        if meta.get(option) is not None:
            config[option] = meta[option]
        elif option in defaults:
            config[option] = defaults[option]
    config["alpha"] = float(config["alpha"])
    config["rank_pattern"] = dict(meta.get("rank_pattern") or {})
    config["alpha_pattern"] = dict(meta.get("alpha_pattern") or {})
    return config, tensors, head


def write_peft_lycoris(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write a LoHa / LoKr record in peft's layout (``PeftModel.from_pretrained`` computes what we do)."""
    config = record.config
    method = str(config["method"])
    out: dict[str, torch.Tensor] = {}
    paths: set[str] = set()

    def no_form(key: str) -> str:
        return (
            f"Adapter {record.name!r} has {method} on a slice of a fused projection ({key!r}); peft puts one "
            f"{method} on a whole module, so this adapter has no peft form. Target the module by name "
            "(target_modules) or use layout='adapterhub'."
        )

    for path, param, tensor in module_tensors(record, spec, model, no_form):
        if not isinstance(model.get_submodule(path), (nn.Linear, nn.Conv1d, nn.Conv2d)):
            raise ConfigError(
                f"Adapter {record.name!r} adapts {path!r}, a {type(model.get_submodule(path)).__name__}; peft's "
                f"{method} adapts nn.Linear, nn.Conv1d and nn.Conv2d only, so this adapter has no peft form. Use "
                "layout='adapterhub'."
            )
        out[f"{PREFIX}{path}.{param}"] = tensor.detach().contiguous()
        paths.add(path)
    modules_to_save = add_saved_tensors(record, out)
    fields = {
        **{option: config[option] for option in _OPTIONS[method] if option in config},
        **by_name_targets(paths),
        "rank_pattern": dict(config.get("rank_pattern") or {}),
        "alpha_pattern": dict(config.get("alpha_pattern") or {}),
        "modules_to_save": modules_to_save,
    }
    meta = peft_meta(PEFT_TYPES[method], record, fields)
    written = write_peft_files(directory, out, meta)
    write_conv_modules(written, record.model.conv_modules)
    return written

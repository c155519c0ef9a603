"""peft OFT / BOFT files (``"peft_type": "OFT"`` / ``"BOFT"``, peft 0.21), read and written as our ``oft`` / ``boft``
targeted by module name.

peft's weights: ``base_model.model.<path>.oft_R.weight`` ``(r or 1, b(b-1)/2)`` (OFT; our ``oft_R``), and
``<path>.boft_R`` ``(m, D, H, H)`` with ``<path>.boft_s`` ``(d_out, 1)`` (BOFT; the same names here).

Reading: each becomes ``by_name.<path with ":">.<param>``; ``target_modules`` names exactly the paths found, the
other options of ``adapter_config.json`` are kept (every key is honoured, metadata, or refused by name: ``bias``
other than ``"none"``, a key of a newer peft, an OFT file from before peft 0.14 without ``oft_block_size``, whose
parametrisation peft itself no longer reads). A BOFT file's butterfly factor count is that of its ``boft_R`` (peft
without its CUDA extension trains one factor whatever the config says). An OFT file that uses the Cayley-Neumann
series and predates peft 0.18 (no or an older ``peft_version``) is read with the current series, with peft's
warning. Tensors of no adapted module are ``modules_to_save`` copies (or a static head), as for LoRA.

Writing: each target under its module path (a spec point through the spec's module name), ``target_modules`` the
list of those paths, ``peft_version`` 0.21.2 (the series this code computes). peft's OFT and BOFT adapt
``nn.Linear`` (not GPT-2's ``Conv1D``) and whole modules (not slices of a fused projection): others are refused.
"""

from __future__ import annotations

import os
import re
import warnings
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
from adapterhub.io.peft_keys import METADATA
from adapterhub.io.peft_layout import make_record, read_weights, saved_modules
from adapterhub.runtime.records import AdapterRecord, ModelInfo
from adapterhub.spec.architectures import ArchitectureSpec

PEFT_TYPES = {"OFT": "oft", "BOFT": "boft"}
WRITTEN_VERSION = "0.21.2"
_WEIGHT = re.compile(r"^(?P<path>.+)\.(?P<param>oft_R\.weight|boft_R|boft_s)$")
_TARGETING = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "modules_to_save")
# the options kept in our config, with peft's defaults (the targets are read from the weights)
OPTIONS: dict[str, dict[str, Any]] = {
    "oft": {
        "r": 0,
        "oft_block_size": 32,
        "module_dropout": 0.0,
        "coft": False,
        "eps": 6e-5,
        "block_share": False,
        "use_cayley_neumann": True,
        "num_cayley_neumann_terms": 5,
        "init_weights": True,
    },
    "boft": {
        "boft_block_size": 4,
        "boft_block_num": 0,
        "boft_n_butterfly_factor": 1,
        "boft_dropout": 0.0,
        "init_weights": True,
    },
}
_OTHER = ("fan_in_fan_out", "bias")  # the module's type decides the one; "none" only, the other


def check_keys(meta: Mapping[str, Any], directory: Path) -> str:
    """The method of a peft OFT / BOFT ``adapter_config.json``; raises a ConfigError naming the first key that
    adapterhub cannot honour, with what to do instead."""
    method = PEFT_TYPES[str(meta["peft_type"])]
    if method == "oft" and "oft_block_size" not in meta:
        raise ConfigError(
            f"The peft OFT adapter in {directory} has no oft_block_size: it was saved by peft < 0.14, whose OFT "
            "parametrisation peft 0.14+ (and adapterhub) no longer reads. Retrain it with a newer peft, or load it "
            "with peft 0.13."
        )
    for key, value in meta.items():
        if key in METADATA or key in OPTIONS[method] or key in _TARGETING or key in _OTHER:
            if key == "bias" and value not in ("none", None):
                raise ConfigError(
                    f"The peft {meta['peft_type']} adapter in {directory} sets bias={value!r}: peft then trains and "
                    f"saves the model's biases, which adapterhub's {method} does not hold. Merge it into the base "
                    "model with peft (merge_and_unload), or train with bias='none'."
                )
            continue
        if value not in (None, False, {}, [], ""):
            raise ConfigError(
                f"The peft adapter in {directory} sets {key}={value!r}, an option of a newer peft that adapterhub "
                "does not know; save it without that option (or with peft 0.21)."
            )
    return method


def _old_neumann(meta: Mapping[str, Any]) -> bool:
    """Whether an OFT file uses the Cayley-Neumann series as peft computed it before 0.18."""
    if not meta.get("use_cayley_neumann", True) or meta.get("peft_type") != "OFT":
        return False
    version = str(meta.get("peft_version") or "0.0.0").partition("@")[0]
    numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return numbers < (0, 18)


def read_peft_oft(
    directory: Path,
    meta: Mapping[str, Any],
    spec: ArchitectureSpec | None,
    model: ModelInfo | None,
    with_head: bool,
) -> AdapterRecord:
    """A peft OFT / BOFT directory -> our record (``by_name.<path>.<param>`` tensors, modules_to_save, head)."""
    method = check_keys(meta, directory)
    if spec is None or spec.decoder is not None:
        raise ConfigError(
            f"The peft {meta['peft_type']} adapter in {directory} targets modules by name: load it with "
            "model.load_adapter(...) on a model whose architecture maps its module names (encoder-decoder models "
            "are not mapped for these files)."
        )
    if _old_neumann(meta):
        warnings.warn(
            f"The peft OFT adapter in {directory} was saved before peft 0.18, which changed the Cayley-Neumann "
            "series; it is read with the current series (as peft does). Retrain it for the outputs it had.",
            stacklevel=2,
        )
    tensors: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    factors: set[int] = set()
    weights, head = module_weights(read_weights(directory), _WEIGHT, directory)  # head: modules_to_save
    for _, path, full_param, tensor in weights:
        param = full_param.split(".")[0]
        tensors[f"by_name.{path.replace('.', ':')}.{param}"] = tensor
        paths.add(path)
        if param == "boft_R":
            factors.add(int(tensor.shape[0]))
    if not paths:
        raise AdapterFileError(f"{directory} holds no {meta['peft_type']} weights.")
    config: dict[str, Any] = {"method": method, "target_modules": sorted(paths)}
    for option, default in OPTIONS[method].items():
        config[option] = meta[option] if meta.get(option) is not None else default
    if len(factors) > 1:
        raise AdapterFileError(
            f"{directory}: its boft_R tensors have different butterfly factor counts {factors}."
        )
    if factors:
        config["boft_n_butterfly_factor"] = factors.pop()  # what was trained, not what was asked for
    if head and meta.get("modules_to_save"):
        head, config, tensors = saved_modules(list(meta["modules_to_save"]), head, config, tensors)
    return make_record(directory, meta, config, tensors, head, spec, model, with_head)


def write_peft_oft(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write an OFT / BOFT record in peft's layout (``PeftModel.from_pretrained`` computes what we do)."""
    config = record.config
    method = str(config["method"])
    label = method.upper()
    out: dict[str, torch.Tensor] = {}
    paths: set[str] = set()

    def no_form(key: str) -> str:
        return (
            f"Adapter {record.name!r} has {label} on a slice of a fused projection ({key!r}); peft puts one "
            f"{label} on a whole module, so this adapter has no peft form. Use layout='adapterhub'."
        )

    for path, param, tensor in module_tensors(record, spec, model, no_form):
        module = model.get_submodule(path)
        if not isinstance(module, nn.Linear):
            raise ConfigError(
                f"Adapter {record.name!r} adapts {path!r}, a {type(module).__name__}; peft's {label} adapts "
                "nn.Linear only (no GPT-2 Conv1D), so this adapter has no peft form. Use layout='adapterhub'."
            )
        name = "oft_R.weight" if param == "oft_R" else param
        out[f"{PREFIX}{path}.{name}"] = tensor.detach().contiguous()
        paths.add(path)
    modules_to_save = add_saved_tensors(record, out)
    fields = {
        **{option: config.get(option, default) for option, default in OPTIONS[method].items()},
        **by_name_targets(paths),
        "fan_in_fan_out": False,
        "bias": "none",
        "modules_to_save": modules_to_save,
    }
    return write_peft_files(directory, out, peft_meta(label, record, fields, WRITTEN_VERSION))

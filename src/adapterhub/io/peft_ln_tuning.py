"""peft LN tuning files (``"peft_type": "LN_TUNING"``), read and written as our ``ln_tuning``.

peft's weights: each tuned norm's copy under ``base_model.model.<path>.ln_tuning_layers.<param>`` (``weight``
``(d,)``, ``bias`` ``(d,)`` for a LayerNorm). Ours: ``copies.<path with ":">.<param>``.

Reading: ``target_modules`` becomes exactly the paths found (what peft's ``target_modules`` /
``exclude_modules`` selected). peft's ``modules_to_save`` (full copies of other modules, e.g. a classifier) is not
held by our LN tuning and is refused by name, as are options adapterhub does not know.

Writing: each copy under its module path, ``target_modules`` the list of those paths.
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
from adapterhub.io.peft_common import PREFIX, by_name_targets, peft_meta, write_peft_files
from adapterhub.io.peft_keys import METADATA
from adapterhub.io.peft_layout import make_record, read_weights
from adapterhub.runtime.records import AdapterRecord, ModelInfo
from adapterhub.spec.architectures import ArchitectureSpec

PEFT_TYPE = "LN_TUNING"
WRITTEN_VERSION = "0.21.2"
_WEIGHT = re.compile(r"^(?P<path>.+)\.ln_tuning_layers\.(?P<param>weight|bias)$")
_OURS = re.compile(r"^copies\.(?P<key>[^.]+)\.(?P<param>weight|bias)$")
_TARGETING = ("target_modules", "exclude_modules")


def read_peft_ln_tuning(
    directory: Path,
    meta: Mapping[str, Any],
    spec: ArchitectureSpec | None,
    model: ModelInfo | None,
    with_head: bool,
) -> AdapterRecord:
    """A peft LN tuning directory -> our record (``copies.<path>.<param>`` tensors)."""
    if spec is None:
        raise ConfigError(
            f"The peft LN tuning adapter in {directory} names its norms by module path: load it with "
            "model.load_adapter(...) on a model."
        )
    for key, value in meta.items():
        if key in METADATA or key in _TARGETING:
            continue
        if key == "modules_to_save" and value:
            raise ConfigError(
                f"The peft LN tuning adapter in {directory} keeps full copies of {value!r} (modules_to_save), which "
                "adapterhub's LN tuning does not hold. Save it from peft without modules_to_save, or merge it with "
                "peft (merge_and_unload)."
            )
        if value not in (None, False, {}, [], ""):
            raise ConfigError(
                f"The peft adapter in {directory} sets {key}={value!r}, an option adapterhub's LN tuning does not "
                "know; save it without that option (or with peft 0.21)."
            )
    tensors: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    for key, tensor in read_weights(directory).items():
        match = _WEIGHT.match(key[len(PREFIX) :]) if key.startswith(PREFIX) else None
        if match is None:
            raise AdapterFileError(
                f"peft weight {key!r} in {directory} is not an LN tuning copy ({PREFIX}<path>.ln_tuning_layers."
                "<weight|bias>)."
            )
        path = match.group("path")
        tensors[f"copies.{path.replace('.', ':')}.{match.group('param')}"] = tensor
        paths.add(path)
    if not paths:
        raise AdapterFileError(f"{directory} holds no LN tuning weights (<path>.ln_tuning_layers.<param>).")
    config: dict[str, Any] = {"method": "ln_tuning", "target_modules": sorted(paths)}
    return make_record(directory, meta, config, tensors, {}, spec, model, with_head)


def write_peft_ln_tuning(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write an LN tuning record in peft's layout (``PeftModel.from_pretrained`` computes what we do)."""
    out: dict[str, torch.Tensor] = {}
    paths: set[str] = set()
    for key, tensor in record.tensors.items():
        match = _OURS.match(key)
        if match is None:
            raise ConfigError(f"Adapter {record.name!r} holds {key!r}, which is not an LN tuning copy.")
        path = match.group("key").replace(":", ".")
        out[f"{PREFIX}{path}.ln_tuning_layers.{match.group('param')}"] = tensor.detach().contiguous()
        paths.add(path)
    fields = {**by_name_targets(paths, layers=False), "modules_to_save": None}
    return write_peft_files(directory, out, peft_meta(PEFT_TYPE, record, fields, WRITTEN_VERSION))

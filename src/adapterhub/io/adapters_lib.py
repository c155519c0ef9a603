"""The `adapters` library's layout (PyPI ``adapters`` 1.x): read it, and write it on request.

Its files: ``adapter_config.json`` ({"config": {...}, "hidden_size", "model_class", "model_name", "model_type",
"name", "version"}), ``pytorch_adapter.bin`` or ``adapter.safetensors``, and optionally ``head_config.json`` with
``pytorch_model_head.bin`` / ``model_head.safetensors``. Weight names look like
``bert.encoder.layer.3.output.adapters.NAME.adapter_down.0.weight``; we map the layer path and site path through the
model's ``ArchitectureSpec`` (``adapters_lib_layers`` and ``adapters_lib_sites``). Pickles are read with
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.io import adapters_lib_inv
from adapterhub.io.adapters_lib_ia3 import ia3_config_to_theirs, is_ia3, read_ia3, write_ia3
from adapterhub.io.adapters_lib_lora import lora_config_to_theirs, read_lora, write_lora, zero_cross
from adapterhub.io.adapters_lib_prefix_encdec import read_encdec_prefix, write_encdec_prefix
from adapterhub.io.adapters_lib_prompt import read_prompt, write_prompt
from adapterhub.io.adapters_lib_reft import read_reft, reft_config_to_theirs, write_reft
from adapterhub.io.adapters_lib_stacks import check_method, has_stack_paths, to_one_path, to_stack_paths
from adapterhub.io.adapters_lib_vera import is_vera, read_vera, vera_config_to_theirs, write_vera
from adapterhub.io.files import (
    read_json,
    read_tensors,
    read_torch_pickle,
    write_json,
    write_tensors,
    write_torch_pickle,
)
from adapterhub.runtime.layers import get_base_model, get_layers, layer_stacks
from adapterhub.runtime.records import AdapterRecord, HeadRecord, ModelInfo
from adapterhub.spec.architectures import ArchitectureSpec

ADAPTERS_VERSION = "adapters.1.3.0"

# Our BottleneckConfig field <- their config key.
_CONFIG_KEYS = {
    "after_attention": "mh_adapter",
    "after_ffn": "output_adapter",
    "reduction_factor": "reduction_factor",
    "non_linearity": "non_linearity",
    "original_ln_before": "original_ln_before",
    "original_ln_after": "original_ln_after",
    "residual_before_ln": "residual_before_ln",
    "ln_before": "ln_before",
    "ln_after": "ln_after",
    "adapter_residual_before_ln": "adapter_residual_before_ln",
    "scaling": "scaling",
    "dropout": "dropout",
    "init_weights": "init_weights",
    "leave_out": "leave_out",
    "after_cross_attention": "cross_adapter",  # left out of our dict while false
}
# Their options we do not implement: a value other than these defaults is refused with a clear message.
_UNSUPPORTED_DEFAULTS: dict[str, Any] = {
    "use_gating": False,
    "phm_layer": False,
    "is_parallel": False,
    "stochastic_depth": 0.0,
}
# Their full bottleneck config, for writing: the defaults of their BnConfig for keys we do not have.
_THEIR_EXTRA_DEFAULTS: dict[str, Any] = {
    "cross_adapter": False,
    "factorized_phm_W": True,
    "factorized_phm_rule": False,
    "hypercomplex_nonlinearity": "glorot-uniform",
    "init_weights_seed": None,
    "inv_adapter": None,
    "inv_adapter_reduction_factor": None,
    "is_parallel": False,
    "learn_phm": True,
    "phm_bias": True,
    "phm_c_init": "normal",
    "phm_dim": 4,
    "phm_init_range": 0.0001,
    "phm_layer": False,
    "phm_rank": 1,
    "shared_W_phm": False,
    "shared_phm_rule": True,
    "stochastic_depth": 0.0,
    "use_gating": False,
}


def config_from_theirs(theirs: dict[str, Any]) -> dict[str, Any]:
    """Their bottleneck config dict -> ours (``{"method": "bottleneck", ...}``)."""
    architecture = theirs.get("architecture")
    if architecture not in (None, "bottleneck"):
        raise ConfigError(
            f"This `adapters` config is a {architecture!r} adapter; adapterhub reads bottleneck adapters from that "
            "library (architecture null or 'bottleneck')."
        )
    parallel = bool(theirs.get("is_parallel")) and not theirs.get("phm_layer")
    for key, default in _UNSUPPORTED_DEFAULTS.items():
        if key == "is_parallel" and parallel:
            continue  # ParBnConfig: our method "parallel"
        if theirs.get(key, default) not in (default, None if default is False else default):
            raise ConfigError(
                f"The adapter uses the `adapters` option {key}={theirs[key]!r}, which adapterhub does not support."
            )
    ours: dict[str, Any] = {"method": "parallel" if parallel else "bottleneck"}
    for our_key, their_key in _CONFIG_KEYS.items():
        if their_key in theirs and theirs[their_key] is not None:
            ours[our_key] = theirs[their_key]
    if isinstance(ours.get("leave_out"), list):
        ours["leave_out"] = [int(i) for i in ours["leave_out"]]
    if isinstance(ours.get("non_linearity"), str):
        ours["non_linearity"] = ours["non_linearity"].lower()
    return adapters_lib_inv.config_from_theirs(theirs, ours)


def config_to_theirs(ours: dict[str, Any]) -> dict[str, Any]:
    if ours.get("method") == adapters_lib_inv.METHOD:
        return {
            **config_to_theirs(adapters_lib_inv.config_to_theirs(ours)),
            **adapters_lib_inv.their_inv_keys(ours),
        }
    if ours.get("method") not in ("bottleneck", "parallel"):
        raise ConfigError("Only bottleneck adapters can be written in the `adapters` layout.")
    theirs = dict(_THEIR_EXTRA_DEFAULTS)
    theirs["is_parallel"] = ours["method"] == "parallel"
    for our_key, their_key in _CONFIG_KEYS.items():
        theirs[their_key] = ours.get(our_key, theirs.get(their_key))
    if ours.get("bottleneck_size") is not None:
        raise ConfigError("bottleneck_size has no equivalent in the `adapters` layout; use reduction_factor.")
    return theirs


# ------------------------------------------------------------------------------------------ weight names


def _bottleneck_sites(spec: ArchitectureSpec) -> dict[str, str]:
    return dict(spec.adapters_lib_bottleneck_sites or spec.adapters_lib_sites)


def _site_pattern(spec: ArchitectureSpec, name: str) -> re.Pattern[str]:
    sites = "|".join(re.escape(path) for path in _bottleneck_sites(spec).values())
    layers = re.escape(spec.adapters_lib_layers)
    return re.compile(rf"^(?:.*\.)?{layers}\.(\d+)\.({sites})\.adapters\.{re.escape(name)}\.(.+)$")


def _our_param(their_param: str, ln_before: bool) -> str | None:
    """``adapter_down.0.weight`` -> ``down.weight`` etc.; None for a duplicate alias we skip."""
    if their_param.startswith("adapter_norm_before."):
        return None  # the same module also appears as adapter_down.0
    if their_param.startswith("adapter_down."):
        index, rest = their_param[len("adapter_down.") :].split(".", 1)
        position = int(index) - (1 if ln_before else 0)
        if ln_before and int(index) == 0:
            return f"norm_before.{rest}"
        if position == 0:
            return f"down.{rest}"
        return None  # activation modules have no parameters
    if their_param.startswith("adapter_up."):
        return "up." + their_param[len("adapter_up.") :]
    if their_param.startswith("adapter_norm_after."):
        return "norm_after." + their_param[len("adapter_norm_after.") :]
    if their_param == "scaling":
        return "scaling"
    raise AdapterFileError(f"Unexpected weight {their_param!r} in an `adapters` bottleneck adapter.")


# ------------------------------------------------------------------------------------------ prefix tuning

# Our PrefixTuningConfig fields, named alike in theirs; their options we do not implement must keep these values.
_PREFIX_KEYS = ("prefix_length", "bottleneck_size", "non_linearity", "dropout", "flat", "leave_out")
_PREFIX_UNSUPPORTED = {"use_gating": False, "encoder_prefix": True}
_PREFIX_EXTRA_DEFAULTS: dict[str, Any] = {
    "architecture": "prefix_tuning",
    "cross_prefix": True,
    "encoder_prefix": True,
    "init_weights_seed": None,
    "shared_gating": True,
    "use_gating": False,
}
_PREFIX_PARAMS = (
    "wte.weight",
    "control_trans.0.weight",
    "control_trans.0.bias",
    "control_trans.2.weight",
    "control_trans.2.bias",
    "control_trans",
)


def _prefix_location(spec: ArchitectureSpec) -> str:
    """Their key of the self-attention prefix: ``self`` for DistilBERT, ``self_prefix`` elsewhere."""
    return "self" if "distilbert" in spec.model_types else "self_prefix"


def _read_prefix(
    directory: Path, theirs: dict[str, Any], name: str, spec: ArchitectureSpec
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Their prefix-tuning adapter: the pool's parameters (saved once per layer and once for the model, all
    copies equal). The flat (ejected) form is told by a 1-D ``control_trans``, since their ``eject_prefix_tuning``
    leaves ``"flat": false`` in the config."""
    for key, default in _PREFIX_UNSUPPORTED.items():
        if theirs.get(key, default) != default:
            raise ConfigError(
                f"The prefix-tuning adapter uses the `adapters` option {key}={theirs[key]!r}, which adapterhub does "
                "not support."
            )
    config: dict[str, Any] = {"method": "prefix_tuning"}
    for key in _PREFIX_KEYS:
        if theirs.get(key) is not None:
            config[key] = theirs[key]
    config["leave_out"] = [int(i) for i in config.get("leave_out", [])]
    if isinstance(config.get("non_linearity"), str):
        config["non_linearity"] = config["non_linearity"].lower()
    pattern = re.compile(rf"^(?:.*\.)?prefix_tunings\.{re.escape(name)}\.[^.]+\.(.+)$")
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in _load_weights(directory, "pytorch_adapter.bin", "adapter.safetensors").items():
        match = pattern.match(key)
        if match is None or match.group(1) not in _PREFIX_PARAMS:
            raise AdapterFileError(
                f"Weight {key!r} in {directory} is not a parameter of the `adapters` prefix-tuning adapter {name!r}."
            )
        tensors[match.group(1)] = tensor
    control = tensors.get("control_trans")
    config["flat"] = control is not None and control.dim() == 1
    return config, tensors


def _prefix_to_theirs(
    record: AdapterRecord, spec: ArchitectureSpec, prefix: str, num_layers: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    ours = record.config
    theirs = dict(_PREFIX_EXTRA_DEFAULTS)
    for key in _PREFIX_KEYS:
        theirs[key] = list(ours[key]) if key == "leave_out" else ours[key]
    theirs["flat"] = bool(ours["flat"])
    location = _prefix_location(spec)
    base = f"{prefix}." if prefix else ""
    tensors: dict[str, torch.Tensor] = {}
    layers = [i for i in range(num_layers) if i not in set(ours["leave_out"])]
    for param, tensor in record.tensors.items():
        tail = f"prefix_tunings.{record.name}.{location}.{param}"
        tensors[f"{base}prefix_tuning.{tail}"] = tensor
        for i in layers:
            path = f"{base}{spec.adapters_lib_layers}.{i}.{spec.attention}.prefix_tuning.pool.{tail}"
            tensors[path] = tensor.clone()
    return theirs, tensors


def _load_weights(directory: Path, stem_bin: str, stem_safe: str) -> dict[str, torch.Tensor]:
    if (directory / stem_safe).exists():
        return read_tensors(directory / stem_safe)
    if (directory / stem_bin).exists():
        return read_torch_pickle(directory / stem_bin)
    raise AdapterFileError(f"{directory} has neither {stem_safe} nor {stem_bin}.")


def read_adapters_lib_dir(
    directory: str | os.PathLike[str],
    spec: ArchitectureSpec,
    *,
    with_head: bool = True,
    model: ModelInfo | None = None,
) -> AdapterRecord:
    """Read that library's adapter directory for a model of ``spec``; ``model`` (the model it loads into) is
    needed where the spec has two stacks named per stack (CLIPModel: the first stack's length)."""
    directory = Path(directory)
    meta = read_json(directory / "adapter_config.json")
    name = meta.get("name")
    if not name:
        raise AdapterFileError(f"{directory / 'adapter_config.json'} has no adapter name.")
    raw = _load_weights(directory, "pytorch_adapter.bin", "adapter.safetensors")
    architecture = meta["config"].get("architecture")
    if has_stack_paths(spec):
        kind = (
            "ia3"
            if is_ia3(meta["config"])
            else "vera"
            if is_vera(meta["config"])
            else str(architecture or "bottleneck")
        )  # bottleneck: none given
        check_method(spec, kind, directory)
        raw = to_one_path(raw, spec, None if model is None else model.decoder_start, directory)
    if architecture == "prefix_tuning" and has_stack_paths(spec):
        config, tensors = read_encdec_prefix(meta["config"], raw, name, str(directory))
    elif architecture == "prefix_tuning":
        config, tensors = _read_prefix(directory, meta["config"], name, spec)
    elif architecture == "lora" and is_ia3(meta["config"]):
        config, tensors = read_ia3(meta["config"], raw, spec, name)
    elif architecture == "lora" and is_vera(meta["config"]):
        config, tensors = read_vera(meta["config"], raw, spec, name)
    elif architecture == "lora":
        config, tensors = read_lora(meta["config"], raw, spec, name)
    elif architecture == "prompt_tuning":
        config, tensors = read_prompt(meta["config"], raw, name)
    elif architecture == "reft":
        config, tensors = read_reft(meta["config"], raw, spec, name)
    else:
        config, tensors = _read_bottleneck(meta["config"], raw, spec, name, directory)
    return _record(directory, meta, name, config, tensors, spec, with_head, model)


def _record(
    directory: Path,
    meta: dict[str, Any],
    name: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    spec: ArchitectureSpec,
    with_head: bool,
    model: ModelInfo | None = None,
) -> AdapterRecord:
    hidden = meta.get("hidden_size")
    if hidden is None:  # their CLIPModel files: CLIPConfig has no hidden_size (each tower's config has one)
        if model is None:
            raise AdapterFileError(
                f"{directory / 'adapter_config.json'} gives no hidden_size; load it with model.load_adapter(...) so "
                "the model's own width is used."
            )
        hidden = model.hidden_size
    head = (
        _read_their_head(directory, name, spec)
        if with_head and (directory / "head_config.json").exists()
        else None
    )
    return AdapterRecord(
        name=name,
        config=config,
        model=ModelInfo(
            model_type=meta.get("model_type", ""),
            model_name=meta.get("model_name") or "",
            hidden_size=int(hidden),
            num_layers=None,
        ),
        tensors=tensors,
        head=head,
        layout="adapters",
        extra={"version": meta.get("version"), "model_class": meta.get("model_class")},
    )


def _read_bottleneck(
    theirs: dict[str, Any], raw: dict[str, torch.Tensor], spec: ArchitectureSpec, name: str, directory: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config = config_from_theirs(theirs)
    pattern = _site_pattern(spec, name)
    site_of = {path: site for site, path in _bottleneck_sites(spec).items()}
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        inv = adapters_lib_inv.read_inv_tensor(key, name)
        if inv is not None and config.get("method") == adapters_lib_inv.METHOD:
            tensors[inv] = tensor
            continue
        match = pattern.match(key)
        if match is None:
            raise AdapterFileError(
                f"Weight {key!r} in {directory} does not match the {spec.model_types[0]} layout of the `adapters` "
                f"library for adapter {name!r}."
            )
        ours = _our_param(match.group(3), bool(config.get("ln_before")))
        if ours is not None:
            tensors[f"layers.{match.group(1)}.{site_of[match.group(2)]}.{ours}"] = tensor
    return config, tensors


def _read_their_head(directory: Path, adapter_name: str, spec: ArchitectureSpec) -> HeadRecord:
    meta = read_json(directory / "head_config.json")
    head_config = dict(meta.get("config") or {})
    head_type = head_config.get("head_type")
    if head_type not in ("classification", "regression"):
        raise AdapterFileError(
            f"The `adapters` head type {head_type!r} is not supported yet (classification only)."
        )
    label2id = head_config.get("label2id") or {}
    id2label = {int(v): str(k) for k, v in label2id.items()} or None
    activation = str(head_config.get("activation_function") or "tanh").lower()
    options = {
        "num_labels": int(head_config.get("num_labels", len(label2id) or 2)),
        "layers": int(head_config.get("layers", 2)),
        "activation": activation,
        "dropout": float(head_config.get("dropout_prob") or 0.0),
        "pooling": "last" if spec.pre_norm else "first",  # decoders classify from the last token
        "use_pooler": bool(head_config.get("use_pooler", False)),
        "multilabel": False,
        "bias": bool(head_config.get("bias", True)),
    }
    head_name = meta.get("name") or adapter_name
    prefix = f"heads.{head_name}."
    tensors = {}
    head_safe = (
        "model_head.safetensors" if (directory / "model_head.safetensors").exists() else "head.safetensors"
    )
    for key, tensor in _load_weights(directory, "pytorch_model_head.bin", head_safe).items():
        if not key.startswith(prefix):
            raise AdapterFileError(
                f"Unexpected head weight {key!r} in {directory} (expected names under {prefix!r})."
            )
        tensors["layers." + key[len(prefix) :]] = tensor
    return HeadRecord(
        name=head_name, head_type="classification", options=options, id2label=id2label, tensors=tensors
    )


def adapter_model_class(model: nn.Module) -> str:
    """That library checks ``model_class``: ``BertForSequenceClassification`` -> ``BertAdapterModel``."""
    name = type(get_base_model(model)).__name__
    return (name[: -len("Model")] if name.endswith("Model") else name) + "AdapterModel"


def write_adapters_lib_dir(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write ``record`` in the `adapters` layout. Weights go both to ``pytorch_adapter.bin`` /
    ``pytorch_model_head.bin`` (what that library's ``load_adapter`` reads by default) and to
    ``adapter.safetensors`` / ``model_head.safetensors`` (read with its ``use_safetensors=True``)."""
    directory = Path(directory)
    if not spec.adapters_lib_layers:
        raise ConfigError(
            f"adapterhub has no mapping to the `adapters` library's layout for {spec.model_types[0]} models "
            "(ArchitectureSpec.adapters_lib_layers / adapters_lib_sites are not set); save with "
            "layout='adapterhub' (or layout='peft' for LoRA, DoRA and (IA)³)."
        )
    model_class = adapter_model_class(model)
    prefix = getattr(get_base_model(model), "base_model_prefix", "") or ""
    method = record.config.get("method")
    check_method(spec, str(method), directory)
    if method == "prefix_tuning" and has_stack_paths(spec):
        num_layers = len(get_layers(model, spec))
        theirs_config, tensors = write_encdec_prefix(
            record, spec, prefix, _first_len(model, spec), num_layers
        )
    elif method == "prefix_tuning":
        num_layers = len(get_layers(model, spec))
        theirs_config, tensors = _prefix_to_theirs(record, spec, prefix, num_layers)
    elif method == "prompt_tuning":
        theirs_config, tensors = write_prompt(record.config, record.tensors, record.name, prefix)
    elif method == "lora":
        theirs_config = lora_config_to_theirs(record.config, spec)
        ours = record.tensors
        if has_stack_paths(spec):
            ours = zero_cross(ours, spec, _first_len(model, spec))
        tensors = write_lora(ours, spec, record.name, prefix)
    elif method == "ia3":
        theirs_config = ia3_config_to_theirs(record.config, spec)
        tensors = write_ia3(record.tensors, spec, record.name, prefix)
    elif method == "vera":
        theirs_config = vera_config_to_theirs(record.config, spec)
        tensors = write_vera(record.config, record.tensors, spec, record.name, prefix, model)
    elif method == "reft":
        theirs_config = reft_config_to_theirs(record.config)
        tensors = write_reft(record.tensors, spec, record.name, prefix)
    else:
        theirs_config = config_to_theirs(record.config)
        tensors = _bottleneck_tensors(record, spec, prefix)
    if has_stack_paths(spec):
        tensors = to_stack_paths(tensors, spec, _first_len(model, spec))
    return _write_their_files(directory, record, tensors, theirs_config, model_class)


def _first_len(model: nn.Module, spec: ArchitectureSpec) -> int:
    """The number of layers in ``model``'s first stack (the encoder, CLIP's text tower)."""
    return sum(1 for _, stack in layer_stacks(model, spec) if stack.layers == spec.layers)


def _bottleneck_tensors(
    record: AdapterRecord, spec: ArchitectureSpec, prefix: str
) -> dict[str, torch.Tensor]:
    ln_before = bool(record.config.get("ln_before"))
    ours, tensors = adapters_lib_inv.write_inv_tensors(record.tensors, record.name, prefix)
    for key, tensor in ours.items():
        _, layer, site, param = key.split(".", 3)
        module, rest = param.split(".", 1) if "." in param else (param, "")
        their = {
            "norm_before": "adapter_down.0",
            "down": "adapter_down.1" if ln_before else "adapter_down.0",
            "up": "adapter_up",
            "norm_after": "adapter_norm_after",
            "scaling": "scaling",
        }[module]
        path = f"{spec.adapters_lib_layers}.{layer}.{_bottleneck_sites(spec)[site]}.adapters.{record.name}.{their}"
        full = f"{prefix}.{path}" if prefix else path
        tensors[f"{full}.{rest}" if rest else full] = tensor
        if module == "norm_before":  # that library registers this LayerNorm under two names
            tensors[full.replace("adapter_down.0", "adapter_norm_before") + f".{rest}"] = tensor.clone()
    return tensors


def _write_their_files(
    directory: Path,
    record: AdapterRecord,
    tensors: dict[str, torch.Tensor],
    theirs_config: dict[str, Any],
    model_class: str,
) -> Path:
    if record.head is not None:
        write_their_head(directory, record.head, record.model, model_class)
    write_tensors(directory / "adapter.safetensors", tensors)
    write_torch_pickle(directory / "pytorch_adapter.bin", tensors)  # what that library loads by default
    write_json(
        directory / "adapter_config.json",
        {
            "config": theirs_config,
            "hidden_size": record.model.hidden_size,
            "model_class": model_class,
            "model_name": record.model.model_name,
            "model_type": record.model.model_type,
            "name": record.name,
            "version": ADAPTERS_VERSION,
        },
    )
    return directory


def write_their_head(directory: Path, head: HeadRecord, model_info: ModelInfo, model_class: str) -> None:
    """Write a classification head as ``head_config.json`` + ``model_head.safetensors`` /
    ``pytorch_model_head.bin`` (weights named ``heads.<name>.<layer index>.<param>``)."""
    if head.head_type != "classification":
        raise ConfigError(
            f"A {head.head_type!r} head cannot be written in the `adapters` layout; save with with_head=False."
        )
    options = head.options
    num_labels = int(options["num_labels"])
    id2label = head.id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    head_tensors = {f"heads.{head.name}.{k[len('layers.') :]}": v for k, v in head.tensors.items()}
    write_tensors(directory / "model_head.safetensors", head_tensors)
    write_torch_pickle(directory / "pytorch_model_head.bin", head_tensors)
    write_json(
        directory / "head_config.json",
        {
            "config": {
                "head_type": "classification",
                "num_labels": num_labels,
                "layers": int(options["layers"]),
                "activation_function": options["activation"],
                "label2id": {label: i for i, label in id2label.items()},
                "use_pooler": bool(options["use_pooler"]),
                "bias": bool(options["bias"]),
                "dropout_prob": options["dropout"],
            },
            "hidden_size": model_info.hidden_size,
            "model_class": model_class,
            "model_name": model_info.model_name,
            "model_type": model_info.model_type,
            "name": head.name,
            "version": ADAPTERS_VERSION,
        },
    )

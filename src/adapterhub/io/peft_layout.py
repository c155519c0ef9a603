"""LoRA in peft's layout: ``adapter_config.json`` (with ``"peft_type": "LORA"``) + ``adapter_model.safetensors``
(or ``adapter_model.bin``), both ways.

peft's weights sit on the adapted modules, ``base_model.model.<module path>.lora_A.weight`` ``(r, d_in)`` and
``lora_B.weight`` ``(d_out, r)``, scaling ``lora_alpha / r`` (``use_rslora``: ``lora_alpha / sqrt(r)``) -- our
shapes and formula. We find each module's point by its path in ``ArchitectureSpec.linears``; the targets and
``leave_out`` are read from the weights themselves (what ``target_modules`` / ``layers_to_transform`` selected),
so any spelling of ``target_modules`` (suffix list or regex) reads the same.

Fused projections (GPT-2's ``c_attn`` = q, k, v): peft puts ONE LoRA on the whole module, ``A (r, d)`` shared and
``B (3d, r)``. That is exactly three of ours -- q, k, v each with a copy of ``A`` and its row slice of ``B`` -- at the
same rank and scaling, so reading is exact. Writing back needs the three ``A`` to be equal (a LoRA read from peft
and not trained since, or merged arithmetic of such); separately trained q/k/v LoRAs have no peft form at the
same rank and are refused with a message saying so.

``modules_to_save`` tensors (``base_model.model.classifier.weight`` ...) become the LoRA adapter's copies of those
modules (``saved.<path>.<param>``, its ``modules_to_save``); for (IA)³ the built-in ("static") head, loaded into the
model's own head when the shapes match. Options we cannot express are refused with a
``ConfigError`` naming the option: ``lora_bias``, ``layer_replication``, ``target_parameters``.

This module also holds the readers of (IA)³ (``peft_type: IA3``, ``adapterhub.io.peft_ia3``), LoHa and LoKr
(``LOHA`` / ``LOKR``, ``adapterhub.io.peft_lycoris``) and VeRA (``VERA``, ``adapterhub.io.peft_vera``), and the
helpers every peft reader shares (``read_weights``, ``saved_modules``, ``make_record``). Which reader / writer a
file or record goes to is the table ``adapterhub.io.peft_dispatch.FORMATS``.

DoRA (``use_dora: true``) reads as our ``dora`` method: peft's ``<module>.lora_magnitude_vector`` ``(d_out,)`` is our
``layers.<i>.<point>.magnitude`` (on a fused projection, its row slices; the norm is per output row, so slicing is
exact); ``save_adapter(layout="peft")`` writes a DoRA adapter back with ``use_dora: true``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.io.files import read_tensors
from adapterhub.io.peft_common import (
    BIN_WEIGHTS_FILE,
    CONFIG_FILE,
    PREFIX,
    WEIGHTS_FILE,
    add_lora_extras,
    lora_meta,
    module_regex,
    read_conv_modules_file,
    split_rows,
    write_peft_files,
)
from adapterhub.io.peft_ia3 import read_peft_ia3
from adapterhub.io.peft_keys import (
    check_lora_keys,
    check_lycoris_keys,
    check_vera_keys,
    init_from_peft,
)
from adapterhub.io.peft_lycoris import read_peft_lycoris
from adapterhub.io.peft_modules import read_peft_modules, write_peft_modules
from adapterhub.io.peft_vera import read_peft_vera
from adapterhub.runtime.layers import get_layers
from adapterhub.runtime.records import AdapterRecord, HeadRecord, ModelInfo
from adapterhub.spec.architectures import ArchitectureSpec
from adapterhub.spec.factor_shapes import FACTOR_NAMES, LORA, factor_update


class Reader(Protocol):
    """Reads one peft type's directory (its ``adapter_config.json`` already read as ``meta``) into our record."""

    def __call__(
        self,
        directory: Path,
        meta: Mapping[str, Any],
        spec: ArchitectureSpec | None,
        model: ModelInfo | None,
        with_head: bool,
    ) -> AdapterRecord: ...


class Writer(Protocol):
    """Writes a record of one of our methods in peft's layout; returns the directory."""

    def __call__(
        self,
        record: AdapterRecord,
        directory: str | os.PathLike[str],
        spec: ArchitectureSpec,
        model: nn.Module,
    ) -> Path: ...


# peft (IA)³ options and the values under which they change nothing we would have to represent (LoRA files: every
# key of LoraConfig is checked by ``adapterhub.io.peft_keys``).
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "bias": ("none",),
    "lora_bias": (False, None),
    "layer_replication": (None, []),
    "target_parameters": (None, []),
    "trainable_token_indices": (None, {}, []),
    "use_qalora": (False, None),
    "use_bdlora": (False, None),
    "alora_invocation_tokens": (None,),
    "arrow_config": (None,),
    "kasa_config": (None,),
    "monteclora_config": (None,),
    "velora_config": (None,),
    "lora_ga_config": (None,),
}
_WHY: dict[str, str] = {
    "bias": "adapterhub's LoRA trains no biases",
    "lora_bias": "adapterhub's LoRA has no bias on lora_B",
}


def is_peft_config(meta: Any) -> bool:
    return isinstance(meta, dict) and "peft_type" in meta


def _refuse_ia3_options(meta: Mapping[str, Any], directory: Path) -> None:
    """Refuse the (IA)³ file options adapterhub cannot represent, by name (LoRA, LoHa / LoKr and VeRA files have
    their every key checked by ``adapterhub.io.peft_keys``)."""
    for option, neutral in _NEUTRAL.items():
        if option in meta and meta[option] not in neutral:
            why = _WHY.get(option, "adapterhub has no equivalent")
            raise ConfigError(
                f"The peft adapter in {directory} sets {option}={meta[option]!r}, which adapterhub cannot represent "
                f"({why}). Save it without that option, or merge it into the base model with peft."
            )
    init = meta.get("init_lora_weights", True)
    if init not in (True, False, "gaussian"):
        raise ConfigError(
            f"The peft adapter in {directory} sets init_lora_weights={init!r}: that initialisation changes the base "
            "weights too, which adapterhub cannot represent. Convert it to a plain LoRA with peft first "
            "(save_pretrained(path_initial_model_for_weight_conversion=...))."
        )


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / WEIGHTS_FILE).exists():
        return read_tensors(directory / WEIGHTS_FILE)
    if (directory / BIN_WEIGHTS_FILE).exists():
        try:
            loaded = torch.load(directory / BIN_WEIGHTS_FILE, map_location="cpu", weights_only=True)
        except Exception as error:
            raise AdapterFileError(f"{directory / BIN_WEIGHTS_FILE} is not readable ({error}).") from None
        return {str(k): v for k, v in loaded.items()}
    raise AdapterFileError(
        f"{directory} has a peft {CONFIG_FILE} but neither {WEIGHTS_FILE} nor {BIN_WEIGHTS_FILE}."
    )


def _module_pattern(spec: ArchitectureSpec) -> re.Pattern[str]:
    modules = "|".join(
        re.escape(m) for m in sorted({lin.module for lin in spec.linears.values()}, key=len, reverse=True)
    )
    return re.compile(
        rf"^(?:.*\.)?{re.escape(spec.layers)}\.(\d+)\.({modules})\.lora_(A|B|magnitude_vector)(?:\.[^.]+)?(?:\.weight)?$"
    )


def _needs_module_targets(
    meta: Mapping[str, Any], raw: Mapping[str, torch.Tensor], pattern: re.Pattern[str]
) -> bool:
    """Whether a peft LoRA file needs targeting by module name: per-module ranks/alphas, trained biases (option
    bias), embedding rows (trainable_token_indices), a LoRA on a module that is no spec projection, or different
    projections in different layers."""
    if meta.get("rank_pattern") or meta.get("alpha_pattern") or meta.get("trainable_token_indices"):
        return True
    if meta.get("bias") not in (None, "none"):
        return True
    found: dict[str, set[str]] = {}
    for key in raw:
        if ".lora_" not in key:
            continue
        match = pattern.match(key)
        if match is None:
            return True
        found.setdefault(match.group(1), set()).add(match.group(2))
    return len({frozenset(modules) for modules in found.values()}) > 1


def _layered_spec(
    directory: Path, meta: Mapping[str, Any], spec: ArchitectureSpec | None
) -> ArchitectureSpec:
    """The model's spec for a LoRA / (IA)³ / LoHa / LoKr / VeRA file; refuses no model, and an encoder-decoder
    model for all of them but LoRA."""
    if spec is None:
        raise ConfigError(
            f"{directory} is a peft adapter, whose files do not say the model type; load it with "
            "model.load_adapter(...) so the model's architecture maps its module names."
        )
    if spec.decoder is not None and meta.get("peft_type") != "LORA":
        raise ConfigError(
            f"The peft {meta.get('peft_type')} adapter in {directory} is for an encoder-decoder model; adapterhub "
            "reads peft LoRA / DoRA files for those (by module name) only. Load it into a decoder-only or encoder "
            "model, or convert it to LoRA."
        )
    return spec


Parts = tuple[
    dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]
]  # config, tensors, head tensors
PartsReader = Callable[
    [Mapping[str, Any], Mapping[str, torch.Tensor], Path, ArchitectureSpec, ModelInfo | None], Parts
]


def parts_reader(check: Callable[[Mapping[str, Any], Path], None], read: PartsReader) -> Reader:
    """The ``Reader`` of a peft type whose module turns the weights into ``(config, tensors, head tensors)``:
    ``check`` refuses the file's options adapterhub cannot hold (by name), the model must have one layer stack,
    then ``read`` (with ``adapter_config.json`` as ``meta`` and the weights) and ``make_record``."""

    def reader(
        directory: Path,
        meta: Mapping[str, Any],
        spec: ArchitectureSpec | None,
        model: ModelInfo | None,
        with_head: bool,
    ) -> AdapterRecord:
        check(meta, directory)
        spec = _layered_spec(directory, meta, spec)
        config, tensors, head = read(meta, read_weights(directory), directory, spec, model)
        return make_record(directory, meta, config, tensors, head, spec, model, with_head)

    return reader


# (IA)³ (peft_ia3), LoHa / LoKr (peft_lycoris; every LoHaConfig / LoKrConfig key honoured, metadata or refused) and
# VeRA (peft_vera; every VeraConfig key likewise)
read_ia3 = parts_reader(
    _refuse_ia3_options,
    lambda meta, raw, directory, spec, model: read_peft_ia3(meta, raw, spec, directory, model),
)
read_lycoris = parts_reader(
    check_lycoris_keys, lambda meta, raw, directory, spec, model: read_peft_lycoris(meta, raw, directory)
)
read_vera = parts_reader(
    check_vera_keys, lambda meta, raw, directory, spec, model: read_peft_vera(meta, raw, directory)
)


def read_lora(
    directory: Path,
    meta: Mapping[str, Any],
    spec: ArchitectureSpec | None,
    model: ModelInfo | None,
    with_head: bool,
) -> AdapterRecord:
    """A peft LoRA directory -> our record (config dict, ``layers.<i>.<point>.lora_A/B`` tensors, static head)."""
    check_lora_keys(meta, directory)  # every LoraConfig key: honoured, metadata or refused by name
    spec = _layered_spec(directory, meta, spec)
    use_dora = bool(meta.get("use_dora"))
    raw = read_weights(directory)
    pattern = _module_pattern(spec)
    # encoder-decoder: by module name always (the module paths of both stacks map to their points)
    if spec.decoder is not None or _needs_module_targets(meta, raw, pattern):
        config_by_name, by_name, by_name_head = read_peft_modules(meta, raw, directory)
        return make_record(directory, meta, config_by_name, by_name, by_name_head, spec, model, with_head)
    by_module: dict[str, list[str]] = {}
    for point, linear in spec.linears.items():
        by_module.setdefault(linear.module, []).append(point)
    r = int(meta.get("r", 8))
    tensors: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        if "lora_embedding_" in key:
            raise ConfigError(
                f"The peft adapter in {directory} has LoRA on embeddings ({key!r}); adapterhub cannot represent it."
            )
        if "lora_magnitude_vector" in key and not use_dora:
            raise AdapterFileError(
                f"peft weight {key!r} is a DoRA magnitude, but {directory / CONFIG_FILE} says use_dora=false."
            )
        match = pattern.match(key)
        if match is None:
            if ".lora_" in key:
                raise ConfigError(
                    f"peft weight {key!r} adapts a module that is not one of the {spec.model_types[0]} projections "
                    f"adapterhub can hold ({', '.join(f'{p}={lin.module}' for p, lin in spec.linears.items())}); "
                    "option target_modules selects it."
                )
            if not key.startswith(PREFIX):
                raise AdapterFileError(f"peft weight {key!r} in {directory} is not under {PREFIX!r}.")
            head[key[len(PREFIX) :]] = tensor  # modules_to_save
            continue
        layer, module, which = match.groups()
        which = "magnitude" if which == "magnitude_vector" else f"lora_{which}"
        points = by_module[module]
        if which == "lora_A" and tensor.shape[0] != r:
            raise ConfigError(f"peft weight {key!r} has rank {tensor.shape[0]}, but the config says r={r}.")
        if len(points) == 1:
            tensors[f"layers.{layer}.{points[0]}.{which}"] = tensor
            continue
        # a fused projection: one LoRA on the whole module = one per slice sharing A
        parts = sorted(points, key=lambda p: spec.linears[p].part[0])  # type: ignore[index]
        if which == "lora_A":
            for point in parts:
                tensors[f"layers.{layer}.{point}.lora_A"] = tensor.clone()
        else:
            for point, block in zip(parts, split_rows(key, tensor, len(parts)), strict=True):
                tensors[f"layers.{layer}.{point}.{which}"] = block
    if not tensors:
        raise AdapterFileError(f"{directory} holds no LoRA weights for a {spec.model_types[0]} model.")
    found: dict[int, set[str]] = {}
    for key in tensors:
        _, layer, point, _ = key.split(".")
        found.setdefault(int(layer), set()).add(point)
    targets = sorted(set().union(*found.values()), key=list(spec.linears).index)
    uneven = {i: sorted(pts) for i, pts in found.items() if pts != set(targets)}
    if uneven:
        raise ConfigError(
            f"The peft adapter in {directory} adapts different projections in different layers ({uneven} vs "
            f"{targets}; options target_modules / layers_to_transform); adapterhub's LoRA has the same targets "
            "in every adapted layer."
        )
    num_layers = model.num_layers if model is not None and model.num_layers else max(found) + 1
    config: dict[str, Any] = {
        "method": "dora" if use_dora else "lora",
        "r": r,
        "alpha": float(meta.get("lora_alpha", 8)),
        "dropout": float(meta.get("lora_dropout", 0.0)),
        "targets": targets,
        "use_rslora": bool(meta.get("use_rslora", False)),
        "leave_out": [i for i in range(num_layers) if i not in found],
    }
    config.update(init_from_peft(meta))
    return make_record(directory, meta, config, tensors, head, spec, model, with_head)


def make_record(
    directory: Path,
    meta: Mapping[str, Any],
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    head: dict[str, torch.Tensor],
    spec: ArchitectureSpec,
    model: ModelInfo | None,
    with_head: bool,
) -> AdapterRecord:
    if (
        head
        and meta.get("modules_to_save")
        and config.get("method") in ("lora", "dora", "loha", "lokr", "vera", "adalora")
    ):
        head, config, tensors = saved_modules(meta["modules_to_save"], head, config, tensors)
    info = ModelInfo(
        model_type=model.model_type if model is not None else spec.model_types[0],
        model_name=str(meta.get("base_model_name_or_path") or (model.model_name if model else "")),
        hidden_size=_hidden_size(tensors, model, spec),
        num_layers=model.num_layers if model is not None else None,
        conv_modules=read_conv_modules_file(directory),
    )
    head_record = None
    if with_head and head:
        head_record = HeadRecord(
            name=directory.name,
            head_type="static",
            options={"parameters": {k: list(v.shape) for k, v in head.items()}, "model_class": "peft model"},
            id2label=None,
            tensors=head,
        )
    return AdapterRecord(
        name=directory.name,
        config=config,
        model=info,
        tensors=tensors,
        head=head_record,
        layout="peft",
        extra={"peft_version": meta.get("peft_version"), "task_type": meta.get("task_type")},
    )


def saved_modules(
    names: list[str],
    head: dict[str, torch.Tensor],
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """peft's ``modules_to_save`` tensors (``<path>.<param>``, the path ending in a listed name) as our adapter's
    copies: ``saved.<path with ":">.<param>``, with ``modules_to_save`` the paths found. Tensors of no listed
    module stay the static head."""
    rest: dict[str, torch.Tensor] = {}
    paths: list[str] = []
    out = dict(tensors)
    for key, tensor in head.items():
        parts = key.split(".")
        cut = next(
            (i for i in range(1, len(parts)) if any(".".join(parts[:i]).endswith(n) for n in names)), None
        )
        if cut is None:
            rest[key] = tensor
            continue
        path = ".".join(parts[:cut])
        out[f"saved.{path.replace('.', ':')}.{'.'.join(parts[cut:])}"] = tensor
        paths.append(path)
    if paths:
        config = {**config, "modules_to_save": sorted(set(paths))}
    return rest, config, out


def _hidden_size(
    tensors: Mapping[str, torch.Tensor], model: ModelInfo | None, spec: ArchitectureSpec | None = None
) -> int:
    """The width of the residual stream the weights imply (every projection but ffn_out reads it); a LoRA, LoHa or
    LoKr target by name counts when its path is a whole projection the spec names
    (``model.layers.0.self_attn.q_proj``; LoHa's and LoKr's widths read by ``spec.factor_shapes``)."""
    factors: dict[tuple[str, str], dict[str, tuple[int, ...]]] = {}
    for key, tensor in tensors.items():
        point = _spec_point_of(key, spec) if key.startswith("by_name.") else None
        if point is not None and not key.endswith(
            LORA
        ):  # LoHa / LoKr: read once all of a module's factors are in
            path, param = key.rsplit(".", 1)
            factors.setdefault((path, point), {})[param] = tuple(tensor.shape)
            continue
        if point is not None:
            key = f"layers.0.{point}.{key.rsplit('.', 1)[-1]}"
        elif key.startswith(("by_name.", "saved.")) or key.count(".") < 2:
            continue  # a module targeted by name (or VeRA's shared projections): no certain residual width
        point = key.split(".")[2]
        if point != "ffn_out" and key.endswith("lora_A"):
            return int(tensor.shape[1])
        if point == "ffn_out" and key.endswith("lora_B"):
            return int(tensor.shape[0])
        # (IA)³ vectors: the input of any projection but ffn_out, the output of ffn_out / o
        if (point.startswith("in_") and point != "in_ffn_out") or point in ("out_ffn_out", "out_o"):
            return int(tensor.shape[0])
    for (_, point), params in factors.items():
        update = factor_update(params, None)
        if update is not None:
            return update[3] if point == "ffn_out" else update[2]
    return model.hidden_size if model is not None else 0


def _spec_point_of(key: str, spec: ArchitectureSpec | None) -> str | None:
    """The linear point of the spec that the module of a ``by_name.<path>.<factor>`` key (LoRA's ``lora_A`` /
    ``lora_B``, LoHa's, LoKr's) is, if it is a whole projection of the spec's first stack (its width is the
    residual stream's), else None."""
    parts = key.split(".")
    if spec is None or len(parts) != 3 or parts[2] not in FACTOR_NAMES or not spec.stacks():
        return None
    stack = spec.stacks()[0]
    match = re.search(rf"(?:^|\.){re.escape(stack.layers)}\.\d+\.(.+)$", parts[1].replace(":", "."))
    if match is None:
        return None
    found = [
        p for p, linear in stack.linears.items() if linear.part is None and linear.module == match.group(1)
    ]
    return found[0] if len(found) == 1 else None


def single_stack(write: Writer) -> Writer:
    """``write`` for models with one layer stack; on an encoder-decoder model it refuses (peft's layout is written
    for LoRA and DoRA there only)."""

    def checked(
        record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
    ) -> Path:
        if spec.decoder is not None:
            raise ConfigError(
                f"layout='peft' on encoder-decoder models writes LoRA and DoRA adapters; {record.name!r} is a "
                f"{record.config.get('method')} adapter. Use layout='adapterhub'."
            )
        return write(record, directory, spec, model)

    return checked


def write_lora(
    record: AdapterRecord, directory: str | os.PathLike[str], spec: ArchitectureSpec, model: nn.Module
) -> Path:
    """Write a LoRA / DoRA record so that ``peft.PeftModel.from_pretrained(base, directory)`` computes what we do."""
    config = record.config
    if config.get("target_modules") is not None or spec.decoder:
        return write_peft_modules(record, directory, spec, model)  # encoder-decoder: each point by its path
    layers = get_layers(model, spec)
    layers_path = next(name for name, module in model.named_modules() if module is layers)
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], dict[str, dict[str, torch.Tensor]]] = {}
    targets: set[str] = set()
    for key, tensor in record.tensors.items():
        if key.startswith(("saved.", "biases.", "tokens.")):
            continue  # modules_to_save, bias, trainable_token_indices: add_saved/bias/token_tensors below
        _, layer, point, param = key.split(".")
        linear = spec.linears[point]
        targets.add(f"{layers_path}.{layer}.{linear.module}")
        if linear.part is None:
            name = "lora_magnitude_vector" if param == "magnitude" else f"{param}.weight"
            out[f"{PREFIX}{layers_path}.{layer}.{linear.module}.{name}"] = tensor.detach().contiguous()
        else:
            fused.setdefault((layer, linear.module), {}).setdefault(point, {})[param] = tensor.detach()
    for (layer, module), by_point in fused.items():
        parts = sorted(
            (p for p, lin in spec.linears.items() if lin.module == module),
            key=lambda p: spec.linears[p].part or (0, 1),
        )
        a_first = by_point[parts[0]]["lora_A"] if parts[0] in by_point else None
        tied = set(by_point) == set(parts) and all(torch.equal(by_point[p]["lora_A"], a_first) for p in parts)  # type: ignore[arg-type]
        if not tied:
            raise ConfigError(
                f"Adapter {record.name!r} puts separate LoRAs on {sorted(by_point)} of the fused projection {module!r} "
                f"(option targets); peft puts one LoRA with one lora_A on the whole {module!r}, so it can be written "
                f"in layout='peft' only when it targets all of {parts} with equal lora_A (as read from peft). Use "
                "layout='adapterhub' instead."
            )
        base = f"{PREFIX}{layers_path}.{layer}.{module}"
        out[f"{base}.lora_A.weight"] = by_point[parts[0]]["lora_A"].contiguous()
        out[f"{base}.lora_B.weight"] = torch.cat([by_point[p]["lora_B"] for p in parts], dim=0).contiguous()
        if "magnitude" in by_point[parts[0]]:
            out[f"{base}.lora_magnitude_vector"] = torch.cat(
                [by_point[p]["magnitude"] for p in parts], dim=0
            ).contiguous()
    extras = add_lora_extras(record, out, targets)
    num_layers = len(layers)
    leave_out = set(config.get("leave_out", []))
    target_modules = module_regex(
        spec,
        (spec.linears[p].module for p in config["targets"]),
        (i for i in range(num_layers) if i not in leave_out),
    )
    targeting: dict[str, Any] = {
        "target_modules": target_modules,
        "layers_to_transform": None,  # the layers are in the target_modules regex
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    fan_in_fan_out = any(spec.linears[p].transposed for p in config["targets"])
    meta = lora_meta(record, targeting, **extras, fan_in_fan_out=fan_in_fan_out)
    return write_peft_files(directory, out, meta)

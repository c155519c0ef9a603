"""``inspect_adapter_dir``: what a saved adapter is, validated without a model (used by the hub server and client).

Reads either layout, resolves the config, and checks that every weight has exactly the name and shape the config
implies for the declared hidden size and number of layers (adapter and head). Nothing is allocated for real: the
expected modules are built on the meta device.

An adapter that targets modules by name (``target_modules``; LN tuning's norms) is checked against the modules its
files hold weights for (``manifest_modules.file_modules``): their paths, layers and the widths the weights fix (LoRA:
``d_in`` from ``A``, ``d_out`` from ``B``); the config must select exactly those modules. What the files cannot fix
stays unknown rather than guessed: the module classes, the model's untouched modules, the shapes of full module
copies (LN tuning, ``modules_to_save``: taken from the file, an LN-tuning copy checked to be ``weight``/``bias``
``(d,)``), and widths neither the file nor the config implies (OFT with ``block_share`` and ``oft_block_size``: its
one shared block does not say how often it repeats, so ``d_in`` stands at the block size; with an ``r`` config it
is ``r · b``); an adapter whose by-name targets' widths cannot be read from its file is
refused with a message saying so. ``hidden_size`` / ``num_layers`` in the manifest are those the files declare.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from adapterhub.errors import AdapterFileError, IncompatibleModelError, UnsupportedArchitectureError
from adapterhub.heads.base import head_class
from adapterhub.io.files import read_json
from adapterhub.io.loading import detect_layout, read_any_adapter_dir
from adapterhub.io.manifest_modules import check_copies, file_modules
from adapterhub.methods import ModelDims, StackDims, method_for_config
from adapterhub.methods.prefix_tuning import PrefixTuningConfig
from adapterhub.runtime.validate import check_state_fits
from adapterhub.spec.architectures import spec_for_model_type
from adapterhub.spec.configs import canonical_json, resolve_config, sha256_hex
from adapterhub.spec.factor_shapes import LOHA, LOKR
from adapterhub.spec.manifest import AdapterManifest, low_rank_modules
from adapterhub.spec.module_layers import check_module_layers


def inspect_adapter_dir(path: str | os.PathLike[str], *, model_type: str | None = None) -> AdapterManifest:
    """Describe and validate the adapter directory at ``path``; raises AdapterFileError / IncompatibleModelError /
    ConfigError with a message naming the problem. ``model_type`` is used when the files do not say it (peft's
    layout: its ``adapter_config.json`` names no model type)."""
    directory = Path(path)
    layout = detect_layout(directory)
    stated = str(read_json(directory / "adapter_config.json").get("model_type") or "")
    if not stated and not model_type:
        raise AdapterFileError(
            f"{directory}: the adapter's files do not say which model type it is for ({layout} layout); state it "
            "(e.g. model_type='bert' in the card / push_adapter_dir(..., model_type=...))."
        )
    model_type = stated or str(model_type)
    try:
        spec = spec_for_model_type(model_type)
    except UnsupportedArchitectureError as error:
        raise IncompatibleModelError(f"{directory}: {error}") from None
    record = read_any_adapter_dir(directory, spec=spec, with_head=True)
    config = resolve_config(record.config)
    method = method_for_config(config)
    start = record.model.decoder_start
    # module paths (by name, copies) in layers the declared model does not have are a model mismatch
    check_module_layers(spec, record.tensors, record.model.num_layers, start, str(directory))
    # modules targeted by name (target_modules, LN tuning's norms): the ones the files hold weights for
    declared = record.model.conv_modules  # nn.Conv2d targets: what flattened kernels do not say
    modules = file_modules(method, config, record.tensors, spec, start, directory, declared)
    layer_indices = [int(key.split(".")[1]) for key in record.tensors if key.startswith("layers.")]
    layer_indices += [m.layer for m in modules if m.layer is not None]
    leave_out = list(getattr(config, "leave_out", ()))
    num_layers = record.model.num_layers or (max(layer_indices + leave_out, default=-1) + 1)
    if not num_layers and not modules:
        raise AdapterFileError(f"{directory}: the adapter has no layer weights.")
    widths = record.model.stack_widths
    _check_declared_model(
        record.tensors, record.model.hidden_size, record.model.num_layers, directory, widths
    )
    shapes = method.shapes_for_config(config, record.tensors)
    stacks = _declared_stacks(method, config, record.tensors, widths, int(num_layers))
    if stacks:  # the model-wide table: each point at the first stack's widths that has it
        table: dict[str, tuple[str, int, int]] = {}
        for stack in stacks:
            for shape in stack.linear_shapes:
                table.setdefault(shape[0], shape)
        shapes = tuple(table.values())
    dims = ModelDims(
        model_type,
        record.model.hidden_size,
        int(num_layers),
        spec.pre_norm,
        linear_shapes=shapes,
        residual_points=tuple(dict.fromkeys(site for stack in spec.stacks() for site in stack.sites)),
        decoder_start=start,
        decoder_points=spec.decoder_points() if start is not None else (),
        modules=modules,
        stacks=stacks,
    )
    # a second stack without cross-attention (CLIP's vision tower) has no cross-attention prefix slots
    cross_start = start if "cross" in dims.decoder_points else None
    # declared stack widths carry their attention shapes; else the prefix width is read from the file
    heads = (
        None if stacks else _attention_shape(config, record.tensors, int(num_layers), directory, cross_start)
    )
    if heads is not None:
        dims = dataclasses.replace(dims, num_heads=1, num_kv_heads=1, head_dim=heads)
    with torch.device("meta"):
        expected = method(record.name, config, dims)
    state = {**expected.state_dict(), **check_copies(expected, record.tensors, directory)}
    try:
        check_state_fits(state, record.tensors, f"adapter {record.name!r} in {directory}")
    except AdapterFileError as error:
        raise AdapterFileError(f"{error}{_undeclared_conv_hint(modules, record.tensors)}") from None
    head = record.head
    if head is not None and head.head_type != "static":
        with torch.device("meta"):
            try:
                head_module = head_class(head.head_type)(
                    head.name, record.model.hidden_size, id2label=head.id2label, **head.options
                )
            except TypeError as error:
                raise AdapterFileError(
                    f"{directory}: the head config has options this version does not accept: {error}."
                ) from None
        check_state_fits(head_module.state_dict(), head.tensors, f"head {head.name!r} in {directory}")
    canonical = config.to_dict()
    return AdapterManifest(
        layout=layout,
        name=record.name,
        method=config.method,
        config=canonical,
        config_hash=sha256_hex(canonical_json(canonical)),
        model_type=model_type,
        model_name=record.model.model_name,
        hidden_size=record.model.hidden_size,
        num_layers=record.model.num_layers,
        has_head=head is not None,
        head_type=None if head is None else head.head_type,
        id2label=None if head is None else head.id2label,
        num_parameters=sum(t.numel() for t in record.tensors.values()),
        files=tuple(sorted(p.name for p in directory.iterdir() if p.is_file())),
        modules=low_rank_modules(
            {k: tuple(t.shape) for k, t in record.tensors.items()}, spec, start, str(directory), declared
        ),
    )


def _undeclared_conv_hint(modules: tuple[Any, ...], tensors: dict[str, torch.Tensor]) -> str:
    """For a misfit, the by-name targets read as linear whose LoHa / LoKr factors could be a convolution's
    flattened kernel that no ``conv_modules`` declares (a folder peft wrote): what to do about them; else ""."""
    lycoris = {
        m.split(".", 2)[1]
        for m in tensors
        if m.startswith("by_name.") and m.rsplit(".", 1)[-1] in LOHA + LOKR
    }
    unsaid = [m.path for m in modules if m.type_name == "Linear" and m.path.replace(".", ":") in lycoris]
    if not unsaid:
        return ""
    return (
        f" If {', '.join(map(repr, unsaid))} is an nn.Conv2d, its factors hold the flattened kernel, which does not "
        "say the input channels or kernel size, and the files do not declare them (conv_modules): load the adapter "
        "into its model with model.load_adapter and save it with model.save_adapter, which records them."
    )


def _attention_shape(
    config: Any,
    tensors: dict[str, torch.Tensor],
    num_layers: int,
    directory: Path,
    cross_start: int | None = None,
) -> int | None:
    """Prefix tuning's width ``N = layers · 2 · kv_heads · head_dim`` is all its shapes depend on; without the model
    we take ``kv_heads · head_dim`` from the saved width (``num_kv_heads=1``), so the shapes are still checked
    against each other and the config (the model's own attention shape is checked when it is loaded)."""
    for part, prefix in _prefix_tuning_parts(config):
        slots = num_layers - len([i for i in part.leave_out if i < num_layers])
        if cross_start is not None and part.cross_prefix:
            # one cross-attention slot per decoder layer with a prefix
            slots += len([i for i in range(cross_start, num_layers) if i not in part.leave_out])
        key = f"{prefix}control_trans" if part.flat else f"{prefix}control_trans.2.weight"
        control = tensors.get(key)
        if control is None or slots <= 0:
            return None  # the state check names the missing weight
        width = control.numel() // part.prefix_length if part.flat else int(control.shape[0])
        if width <= 0 or width % (2 * slots):
            raise AdapterFileError(
                f"{directory}: the prefix width {width} of {key!r} is not 2 × {slots} layers × the attention "
                "width; the file is corrupted or was written for a different config."
            )
        return width // (2 * slots)  # kv_heads · head_dim
    return None


def _prefix_tuning_parts(config: Any) -> list[tuple[PrefixTuningConfig, str]]:
    """The prefix-tuning configs (gated ones included) in ``config``: itself, or the parts of a method union, each
    with the prefix its tensor names carry (``""`` or ``"parts.<i>."``)."""
    parts = getattr(config, "configs", None)
    candidates = [(c, f"parts.{i}.") for i, c in enumerate(parts)] if parts is not None else [(config, "")]
    return [(c, prefix) for c, prefix in candidates if isinstance(c, PrefixTuningConfig)]


def _check_declared_model(
    tensors: dict[str, torch.Tensor],
    hidden_size: int,
    num_layers: int | None,
    directory: Path,
    stack_widths: tuple[tuple[int, int, int | None, int | None], ...] = (),
) -> None:
    """Weights made for another hidden size or more layers than declared are a model mismatch, not corruption.
    With declared ``stack_widths`` a layer's hidden size is its stack's."""
    for key, tensor in tensors.items():
        parts = key.split(".")
        if num_layers is not None and parts[0] == "layers" and int(parts[1]) >= num_layers:
            raise IncompatibleModelError(
                f"{directory}: weight {key!r} is for layer {parts[1]}, but the declared model has {num_layers} layers."
            )
        layer = _layer_of_key(key)
        hidden = hidden_size
        for start, width, _, _ in stack_widths:
            if layer is not None and layer >= start:
                hidden = width
        if key.endswith(".up.bias") and tensor.shape[0] != hidden:
            raise IncompatibleModelError(
                f"{directory}: weight {key!r} is for hidden size {tensor.shape[0]}, but the adapter config declares "
                f"hidden size {hidden}" + (" for its layer" if stack_widths else "") + "."
            )


def _layer_of_key(key: str) -> int | None:
    """The layer a weight's name places it in (``layers.<i>.`` or ``parts.<k>.layers.<i>.``), or None."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if part == "layers" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def _declared_stacks(
    method: Any,
    config: Any,
    tensors: dict[str, torch.Tensor],
    stack_widths: tuple[tuple[int, int, int | None, int | None], ...],
    num_layers: int,
) -> tuple[StackDims, ...]:
    """The ``StackDims`` of stacks of different widths the files declare (``stack_widths``: CLIPModel's towers):
    each with its declared hidden size and attention shape, and the projection widths its own layers' weights
    imply (weights outside the layers, e.g. VeRA's shared projections, count for every stack). Empty when none are
    declared."""
    stacks = []
    for k, (start, hidden, kv_heads, head_dim) in enumerate(stack_widths):
        end = stack_widths[k + 1][0] if k + 1 < len(stack_widths) else num_layers
        own = {
            key: t
            for key, t in tensors.items()
            if (layer := _layer_of_key(key)) is None or start <= layer < end
        }
        shapes = method.shapes_for_config(config, own)
        stacks.append(StackDims(start, hidden, shapes, kv_heads, kv_heads, head_dim))
    return tuple(stacks)

"""The model's submodules as targeting by name sees them (``ModelDims.modules``), the weights of one by path, and
the forward hooks of module points (``("module", path)``).

``modules_to_save``: ``saved_copy`` makes an adapter's trainable copy of a module (without the model's hooks), and
``attach_saved_modules`` hooks the original so that the copy's output replaces its own while the adapter is active (per row block under
a top-level ``BatchSplit`` / ``Parallel``).

A module point is attached when an adapter that occupies it joins the model (``attach_module_points``): one
``_ModuleHook`` per module, shared by every adapter there. Like the spec's linear hooks it returns ``None`` at once
when no adapter of the current setup uses module points, so outputs stay bit-identical.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import MODULE, MODULE_LAYER, LinearInputs, NamedModule
from adapterhub.runtime import callstate
from adapterhub.runtime.injection import AdapterHook, PointHandler, remove_hooks
from adapterhub.runtime.layers import layer_stacks
from adapterhub.runtime.mha_points import AttentionPointHook, attach_attention_point
from adapterhub.runtime.quantized import float_weight, refuse_quantized, weight_reader
from adapterhub.spec.architectures import ArchitectureSpec
from adapterhub.spec.composition import BatchSplit, Parallel, Stack, setup_names

_SKIP = "_adapterhub"  # the adapter store (STORE_ATTR): adapters and heads are never targets
# the convolutions LoRA attaches to by name (peft's _ConvNd LoRA: Conv1d, Conv2d, Conv3d)
LORA_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(module, Conv1D)


# The attribute names of a sequence classifier's built-in head (peft's SEQ_CLS_HEAD_NAMES)
CLASSIFIER_HEAD_NAMES = ("score", "classifier")


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output head, which ``target_modules="all-linear"`` leaves out as peft does: its output
    embeddings (a causal or masked LM head), else a sequence classifier's ``score`` / ``classifier`` module (peft
    leaves that one out for ``task_type="SEQ_CLS"``; a classifier trains whole with the adapter here)."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is not None:
        return head
    for name in CLASSIFIER_HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def module_table(model: nn.Module, spec: ArchitectureSpec) -> tuple[NamedModule, ...]:
    """Every submodule of ``model`` (its own adapter store left out), with shapes for ``nn.Linear`` / ``Conv1D``,
    the transformer layer holding it and the spec point it is (a whole projection the spec names)."""
    by_id = {id(layer): (index, stack) for index, (layer, stack) in enumerate(layer_stacks(model, spec))}
    head = output_head(model)
    getter = getattr(model, "get_input_embeddings", None)
    try:
        inputs = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        inputs = None
    layer_paths: dict[str, tuple[int, Any]] = {}
    table: list[NamedModule] = []
    embeddings: dict[int, str] = {}  # id(weight) -> path of the nn.Embedding holding it
    for path, module in _base_modules(model):
        if id(module) in by_id:
            layer_paths[path] = by_id[id(module)]
        layer, point = _owner(path, layer_paths)
        held = _bias_fields(module)
        if isinstance(module, nn.Embedding):
            embeddings.setdefault(id(module.weight), path)
            held["input_embedding"] = module is inputs
        elif isinstance(module, nn.Linear) and id(module.weight) in embeddings:
            held["tied_to"] = embeddings[id(module.weight)]
        if isinstance(module, nn.Embedding):
            table.append(
                NamedModule(
                    path,
                    type(module).__name__,
                    d_in=int(module.num_embeddings),
                    d_out=int(module.embedding_dim),
                    transposed=True,
                    layer=layer,
                    output_head=module is head,
                    embedding=True,
                    padding_idx=module.padding_idx,
                    **held,
                )
            )
            continue
        if isinstance(module, nn.MultiheadAttention):
            embed = int(module.embed_dim)
            table.append(
                NamedModule(
                    path,
                    type(module).__name__,
                    d_in=embed,
                    d_out=3 * embed,
                    layer=layer,
                    attention=True,
                    **held,
                )
            )
            continue
        if isinstance(module, LORA_CONVS):
            table.append(
                NamedModule(
                    path,
                    type(module).__name__,
                    d_in=int(module.in_channels),
                    d_out=int(module.out_channels),
                    layer=layer,
                    conv=(module.kernel_size, module.stride, module.padding),
                    groups=int(module.groups),
                    **held,
                )
            )
            continue
        if isinstance(module, nn.Linear):
            shape = (int(module.in_features), int(module.out_features), False)
        elif _is_conv1d(module):
            weight: torch.Tensor = module.weight  # type: ignore[assignment]  # (d_in, d_out)
            shape = (int(weight.shape[0]), int(weight.shape[1]), True)
        else:
            table.append(NamedModule(path, type(module).__name__, layer=layer, **held))
            continue
        table.append(
            NamedModule(
                path,
                type(module).__name__,
                linear=True,
                d_in=shape[0],
                d_out=shape[1],
                transposed=shape[2],
                layer=layer,
                point=point,
                output_head=module is head,
                **held,
            )
        )
    return tuple(table)


_CHANNEL_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
)


def bias_axis(module: nn.Module) -> int | None:
    """The output dimension along which ``module`` adds its ``bias``: -1 for Linear, GPT-2's Conv1D and layer norms,
    1 for convolutions and batch / group / instance norms; None for a type whose use of its bias is not known."""
    if (
        isinstance(module, (nn.Linear, nn.LayerNorm))
        or _is_conv1d(module)
        or "LayerNorm" in type(module).__name__
    ):
        return -1
    if isinstance(module, _CHANNEL_FIRST):
        return 1
    return None


def _base_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` without the model itself and without descending into its adapter store: the walk
    costs the base model's size, not the size of the adapters loaded (a server holding many adapters calls this
    on every load). Each module once, at its first path in the same pre-order as ``named_modules``."""
    seen: set[int] = {id(model)}
    stack: list[tuple[str, nn.Module]] = [
        (name, child)
        for name, child in reversed(model._modules.items())
        if child is not None and name != _SKIP
    ]
    while stack:
        path, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        yield path, module
        stack.extend(
            (f"{path}.{name}", child)
            for name, child in reversed(module._modules.items())
            if child is not None
        )


def structure_ids(model: nn.Module) -> tuple[tuple[Any, ...], list[Any]]:
    """What ``module_table`` and the model's widths read from a model, as identities: ``(ids, objects)`` with
    ``ids`` the config's id, then per base module (in walk order) its id, its ``weight``'s id and shape and
    whether it holds a ``bias``, and ``objects`` the objects those ids name. Equal ids while the objects a first
    call saw are still alive (``cached_by_structure`` holds weak references) mean the same module tree:
    replacing a module, a weight or the config (quantisation, ``resize_token_embeddings``) changes them."""
    config = getattr(model, "config", None)
    ids: list[Any] = [id(config)]
    objects: list[Any] = [config]
    seen: set[int] = {id(model)}
    # the walk of ``_base_modules`` without building paths (the same modules, in the same order)
    stack = [child for name, child in reversed(model._modules.items()) if child is not None and name != _SKIP]
    while stack:
        module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        params = module._parameters
        weight = params.get("weight")
        has_bias = isinstance(params.get("bias"), torch.Tensor)
        if weight is None:
            ids.append((id(module), has_bias))
        else:
            ids.append((id(module), id(weight), weight.shape, has_bias))
            objects.append(weight)
        objects.append(module)
        stack.extend(child for child in reversed(module._modules.values()) if child is not None)
    return tuple(ids), objects


_STRUCTURE_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary()
)


def cached_by_structure(model: nn.Module, slot: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per module tree of ``model`` (``structure_ids``), recomputed when the tree changed. Kept
    beside the model (not in it: copies and pickles of the model carry nothing) with weak references to the
    objects it was computed from. For what depends on the base modules and the config only (never on adapters,
    whose store the walk skips)."""
    ids, objects = structure_ids(model)
    slots = _STRUCTURE_CACHE.setdefault(model, {})
    cached = slots.get(slot)
    if cached is not None and cached[0] == ids and all(ref() is not None for ref in cached[1]):
        return cached[2]
    value = compute()
    slots[slot] = (ids, tuple(_weak(obj) for obj in objects if obj is not None), value)
    return value


def _weak(obj: Any) -> Callable[[], Any]:
    """A weak reference to ``obj``; for an object that takes none (a plain value), one that holds it."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def _bias_fields(module: nn.Module) -> dict[str, Any]:
    has = isinstance(module._parameters.get("bias"), torch.Tensor)
    return {"bias": has, "bias_axis": bias_axis(module) if has else None}


def _owner(path: str, layer_paths: dict[str, tuple[int, Any]]) -> tuple[int | None, str | None]:
    """``(layer index, spec point)`` of the module at ``path``: the layer it sits in, and the spec's linear point
    whose (unfused) module it is."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in layer_paths:
            index, stack = layer_paths[prefix]
            rest = ".".join(parts[cut:])
            point = next(
                (p for p, lin in stack.linears.items() if lin.module == rest and lin.part is None), None
            )
            return index, point
    return None, None


def is_transposed(module: nn.Module) -> bool:
    """Whether the module stores its weight as ``(d_in, d_out)``: ``Conv1D``, and ``nn.Embedding`` (a linear map
    from one-hot ids: ``(num_embeddings, embedding_dim)``)."""
    return isinstance(module, nn.Embedding) or _is_conv1d(module)


def module_params(model: nn.Module, path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Views of the module's ``(weight (d_out, d_in), bias (d_out,) or None)`` (``Conv1D`` and ``nn.Embedding``
    transposed)."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"The model has no module {path!r} (a module target of an adapter).") from None
    if isinstance(module, nn.MultiheadAttention):  # LoRA's in_proj target: the fused q/k/v weight (3E, E)
        return module.in_proj_weight, module.in_proj_bias
    weight = float_weight(module)  # a quantised module: a dequantised copy (read only)
    bias: torch.Tensor | None = getattr(module, "bias", None)
    return (weight.t() if is_transposed(module) else weight), bias


class _ModuleHook(AdapterHook):
    """Forward hook on a module targeted by name: the adapters' value for the point ``("module", path)``."""

    def __init__(self, handler: PointHandler, path: str, transposed: bool) -> None:
        self.handler, self.path, self.transposed = handler, path, transposed

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        handler = self.handler
        if not handler.uses(MODULE) or not args:
            return None
        weight: Any = weight_reader(module)  # quantised: dequantised only when a method asks (require_weight)
        if isinstance(weight, torch.Tensor) and self.transposed:
            weight = weight.t()  # (d_out, d_in)
        # x: (..., d_in), or token ids (...) for an nn.Embedding
        inputs = LinearInputs(args[0], output, weight, getattr(module, "bias", None))
        return handler.point_forward(MODULE_LAYER, MODULE, self.path, inputs)


def attach_module_points(model: nn.Module, handler: PointHandler, paths: list[str]) -> None:
    """Hook each module in ``paths`` (once: a module already hooked keeps its hook)."""
    for path in paths:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            raise ConfigError(f"The model has no module {path!r} to attach an adapter to.") from None
        if any(
            isinstance(hook, (_ModuleHook, AttentionPointHook)) for hook in module._forward_hooks.values()
        ):
            continue
        if isinstance(module, nn.Embedding) and getattr(module, "embed_scale", None) is not None:
            raise ConfigError(
                f"{path!r} is a scaled embedding ({type(module).__name__}: it multiplies its output by embed_scale); "
                "LoRA on such embeddings is not supported yet. Leave it out of target_modules."
            )
        if isinstance(module, LORA_CONVS) and (
            any(d != 1 for d in module.dilation) or module.padding_mode != "zeros"
        ):
            name = type(module).__name__
            raise ConfigError(
                f"{path!r} is a {name} with dilation={module.dilation}, padding_mode={module.padding_mode!r}; LoRA "
                f"on {name} supports dilation=1 and zero padding (peft's lora_A convolution has no dilation and pads "
                "with zeros, so its output would not fit the module's). Leave it out of target_modules."
            )
        if isinstance(module, nn.MultiheadAttention):
            attach_attention_point(module, handler, path)
            continue
        # prepended: adapters' updates see the module's own output, before a held bias (option bias) replaces b
        module.register_forward_hook(_ModuleHook(handler, path, is_transposed(module)), prepend=True)


def saved_copy(model: nn.Module, handler: Any, path: str) -> nn.Module:
    """A trainable copy of the module at ``path``, without adapterhub's hooks (``handler``, the adapter store the
    hooks refer to, is shared, not copied)."""
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"The model has no module {path!r} (modules_to_save).") from None
    for inner, part in module.named_modules(prefix=path):
        refuse_quantized(
            part,
            inner,
            "modules_to_save (a trainable full copy of the module)",
            "Leave it out of modules_to_save and target it with LoRA instead (target_modules).",
        )
    clone = copy.deepcopy(module, {id(handler): handler})
    remove_hooks(clone)
    for part in clone.modules():  # attention hooks' bookkeeping (adapterhub.runtime.attention_hooks)
        for attr in [a for a in part.__dict__ if a.startswith("_adapterhub_")]:
            del part.__dict__[attr]
    return clone.requires_grad_(True)


class _SavedModuleHook(AdapterHook):
    """Forward hook on a module an adapter keeps a copy of (``kind="module"``: ``modules_to_save``) or whose bias it
    keeps a copy of (``kind="bias"``: LoRA's ``bias`` option): while that adapter is active, its copy's output
    replaces the module's (``y' = y - b + b'`` for a held bias ``b'``).

    - One adapter name, or a Stack of adapter names: the copy of the one holder runs on the whole batch.
    - A top-level ``BatchSplit`` or ``Parallel``: row block ``i`` (``batch_sizes[i]`` rows; under Parallel the
      ``i``-th of ``n`` equal blocks of the replicated batch) goes through the copy held by child ``i``'s adapter,
      or the original module when child ``i`` holds none, so each block computes what its child computes alone.
      The module's input and output must be batch-first with those rows (under Parallel: the module runs after
      the batch is replicated, i.e. not before the first adapted layer).

    Two holders of one copy that would act on the same rows (a Stack of both, a child with both), a holder inside
    another block (Split, Average, Fuse, nested), or rows that do not fit raise a ConfigError saying what to do.
    """

    def __init__(self, store: Any, path: str, kind: str = "module") -> None:
        self.store, self.path, self.kind = store, path, kind
        self.what, self.option, self.held = {
            "module": ("modules_to_save", "modules_to_save", "saved_paths"),
            "bias": ("its bias, option bias", "bias (bias='none')", "bias_paths"),
            "tokens": ("its rows, option trainable_token_indices", "trainable_token_indices", "token_paths"),
        }[kind]

    def _apply(
        self, holder: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        """What the module returns with ``holder``'s copy: ``output`` (its rows) is what the model's module gave."""
        adapter = self.store.adapters[holder]
        if self.kind == "module":
            return adapter.saved_module(self.path)(*args, **kwargs)
        if self.kind == "tokens":
            return _token_rows(module, adapter.token_delta(self.path), args[0], output)
        held, own = adapter.held_bias(self.path), module.bias  # (d,), (d,)
        axis = -1 if bias_axis(module) == -1 else 1
        shape = [1] * output.dim()
        shape[axis] = -1
        return output + (held - own).to(output.dtype).view(shape)

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        store = self.store
        setup = store.current_setup()
        if setup is None:
            return None
        holders = self._holders(setup)
        if not holders:
            return None
        if _plain(setup):
            self._one_holder(holders, setup)
            return self._apply(holders[0], module, args, kwargs, output)
        if not isinstance(setup, (BatchSplit, Parallel)):
            raise ConfigError(
                f"Adapter(s) {holders} keep a copy of {self.path!r} ({self.what}); a copy runs with its adapter "
                f"alone, in a Stack of adapter names, or as a child of a top-level BatchSplit / Parallel, not in "
                f"{setup!r}. Activate the adapter in one of those setups, or save it without {self.option}."
            )
        return self._by_rows(setup, module, args, kwargs, output)

    def _holders(self, setup: Any) -> list[str]:
        adapters = self.store.adapters
        # a merged adapter's held bias / rows are in the model's own (merge_adapter): nothing to replace
        merged = self.store.merged if self.kind != "module" else ()
        holders = [
            n for n in setup_names(setup) if n in adapters and self.path in getattr(adapters[n], self.held)()
        ]
        folded = [n for n in holders if n in merged]
        if folded and len(holders) > len(folded):
            raise ConfigError(
                f"Adapter(s) {folded} (merged) and {[n for n in holders if n not in merged]} each keep a copy of "
                f"{self.path!r} ({self.what}); the merged copy is in the model's own, and only one copy can apply. "
                "Activate one of them, or unmerge first."
            )
        return [n for n in holders if n not in merged]

    def _one_holder(self, holders: list[str], where: Any) -> None:
        if len(holders) > 1:
            raise ConfigError(
                f"Adapters {holders} each keep a copy of {self.path!r} ({self.what}) and would act on the same "
                f"rows in {where!r}; only one copy can replace the module for a row. Activate one of them there, "
                f"or save the others without {self.option}."
            )

    def _by_rows(
        self,
        setup: BatchSplit | Parallel,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
    ) -> Any:
        """Row block ``i`` of ``output`` from child ``i``'s copy (or the module's own rows): ``(rows, ...)``."""
        if not isinstance(output, torch.Tensor):
            raise ConfigError(
                f"{self.path!r} ({self.what}) returns a {type(output).__name__}, not one batch-first tensor, so "
                f"its rows cannot be split per child of {setup!r}; activate its adapters one at a time."
            )
        rows = output.shape[0]
        if isinstance(setup, BatchSplit):
            sizes = list(setup.batch_sizes)
        else:
            n = len(setup.children)
            state = callstate.current(self.store)
            if state is None or state.parallel_batch is None or rows != n * state.parallel_batch:
                raise ConfigError(
                    f"{self.path!r} ({self.what}) runs before {setup!r} replicates the batch (it sits before the "
                    "first adapted layer), so every branch would see the same rows. Activate the branches one at "
                    f"a time, or keep that module out of {self.option}."
                )
            sizes = [state.parallel_batch] * n
        if sum(sizes) != rows:
            raise ConfigError(
                f"{self.path!r} ({self.what}) gets {rows} rows but {setup!r} splits {sum(sizes)}; its copies "
                "can follow the split only on batch-first modules. Activate the adapters one at a time."
            )
        blocks: list[torch.Tensor] = []
        start = 0
        for child, size in zip(setup.children, sizes, strict=True):
            block = slice(start, start + size)
            start += size
            holders = [] if child is None else self._holders(child)
            if not holders:
                blocks.append(output[block])  # (size, ...): the module's own rows
                continue
            if not _plain(child):
                raise ConfigError(
                    f"Adapter(s) {holders} keep a copy of {self.path!r} ({self.what}) inside {child!r}; in a "
                    f"{type(setup).__name__} a copy follows a child that is an adapter name or a Stack of names."
                )
            self._one_holder(holders, child)
            part = self._apply(
                holders[0], module, _rows(args, block, rows), _rows(kwargs, block, rows), output[block]
            )
            blocks.append(part)  # (size, ...)
        return torch.cat(blocks, dim=0)  # (rows, ...)


def _token_rows(
    module: nn.Module, held: tuple[tuple[int, ...], torch.Tensor], x: torch.Tensor, output: Any
) -> Any:
    """The module's output with the adapter's rows at its token ids (peft's TrainableTokensLayer): an embedding's
    positions holding those ids get the held rows (times ``embed_scale``, if any); a tied output head's columns of
    those ids are ``x · rows[k] (+ b[id])``."""
    ids, rows = held  # rows: (n, d)
    index = torch.tensor(ids, device=output.device)  # (n,)
    if isinstance(module, nn.Embedding):  # x: token ids (...); output (..., d)
        lookup = torch.full((module.num_embeddings,), -1, dtype=torch.long, device=x.device)
        lookup[index] = torch.arange(len(ids), device=x.device)
        position = lookup[x]  # (...): the row of the copy, or -1
        new = rows[position.clamp(min=0)].to(output.dtype)  # (..., d)
        scale = getattr(module, "embed_scale", None)
        if scale is not None:
            new = new * scale.to(output.dtype) if isinstance(scale, torch.Tensor) else new * scale
        return torch.where((position >= 0).unsqueeze(-1), new, output)
    columns = x @ rows.t().to(x.dtype)  # (..., n): the tied head's logits of those ids
    bias = getattr(module, "bias", None)
    if bias is not None:
        columns = columns + bias[index]
    return output.index_copy(output.dim() - 1, index, columns.to(output.dtype))  # (..., vocab)


def _plain(setup: Any) -> bool:
    """An adapter name, or a Stack of adapter names."""
    return isinstance(setup, str) or (
        isinstance(setup, Stack) and all(isinstance(c, str) for c in setup.children)
    )


def _rows(value: Any, block: slice, rows: int) -> Any:
    """``value`` with every batch-first tensor (``rows`` rows) cut to ``block``."""
    if isinstance(value, torch.Tensor):
        return value[block] if value.dim() >= 1 and value.shape[0] == rows else value
    if isinstance(value, tuple):
        return tuple(_rows(v, block, rows) for v in value)
    if isinstance(value, list):
        return [_rows(v, block, rows) for v in value]
    if isinstance(value, dict):
        return {k: _rows(v, block, rows) for k, v in value.items()}
    return value


def attach_saved_modules(model: nn.Module, store: Any, paths: tuple[str, ...], kind: str = "module") -> None:
    """Hook each module in ``paths`` (once per ``kind``) so an active adapter's copy of it (``"module"``) or of its
    bias (``"bias"``) replaces it."""
    for path in paths:
        module = model.get_submodule(path)
        hooks = module._forward_hooks.values()
        if any(isinstance(hook, _SavedModuleHook) and hook.kind == kind for hook in hooks):
            continue
        module.register_forward_hook(_SavedModuleHook(store, path, kind), with_kwargs=True)

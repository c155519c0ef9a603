"""The ``("attention", "self")`` attachment point: an attention function registered with transformers.

transformers (5.x for every supported architecture; 4.5x for the decoders) computes self-attention by calling
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, query, key, value, attention_mask, **kwargs)``
after the key/value projections, RoPE and the KV-cache update. We register ``"adapterhub_<impl>"`` (``impl`` =
``sdpa`` or ``eager``) with ``AttentionInterface`` and, so that the model still builds its masks exactly as
before, the same mask function as ``impl`` with ``AttentionMaskInterface`` (a name unknown there gets no mask).

- ``install(model, spec, store)`` (from ``adapterhub.init``) records, in each layer's self-attention module (and an
  encoder-decoder decoder's cross-attention module, point ``"cross"``), the layer index, the point and the store (``AttentionOwner``; the store never refers back to the model, so no reference cycle
  and no global registry: deep copies and pickles of the model carry it along).
- ``enable(model)`` (when the first adapter with an attention point is added) switches the model's
  ``config._attn_implementation`` from ``impl`` to ``"adapterhub_<impl>"``; ``disable(model)`` (``deinit``)
  switches it back.
- The function asks the store whether an active adapter attaches at attention points; if not (or the module is
  not ours) it calls the wrapped implementation with the very same arguments, so outputs are bit-identical.
  Otherwise it hands ``AttentionInputs`` to ``store.point_forward``. For ``eager`` the wrapped function is the
  ``eager_attention_forward`` of the model's own modeling module.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from adapterhub.errors import ConfigError, UnsupportedArchitectureError
from adapterhub.methods.base import ATTENTION, AttentionInputs, PointInputs
from adapterhub.runtime.layers import layer_stacks
from adapterhub.spec.architectures import ArchitectureSpec

PREFIX = "adapterhub_"
SUPPORTED = ("sdpa", "eager")


class PointHandler(Protocol):
    def uses(self, kind: str) -> bool: ...

    def point_forward(
        self, layer: int, kind: str, point: str, inputs: PointInputs
    ) -> torch.Tensor | None: ...


OWNER_ATTR = "_adapterhub_attention"
CAPTURE_ATTR = "_adapterhub_capture_hook"  # the handle of the pre-hook below, removed by ``disable``
# id(attention module) -> its input hidden states, per thread (for gated prefix tuning)
_INPUTS = threading.local()


def _capture_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Forward pre-hook: keep the self-attention input for the attention function (only while an adapter of the
    current setup attaches at attention points)."""
    owner: AttentionOwner | None = module.__dict__.get(OWNER_ATTR)
    if owner is None or not owner.store.uses(ATTENTION):
        return
    hidden = args[0] if args else kwargs.get("hidden_states")
    if isinstance(hidden, torch.Tensor):
        table = getattr(_INPUTS, "table", None)
        if table is None:
            table = _INPUTS.table = {}
        table[id(module)] = hidden


class AttentionOwner:
    """Kept in an attention module's ``__dict__`` (not a submodule: it is not in state dicts): the store and layer
    index the module belongs to. The store holds no reference back to the model, so this makes no cycle; a deep
    copy or pickle of the model carries it along and points at the copy's own store."""

    __slots__ = ("index", "point", "store")

    def __init__(self, store: PointHandler, index: int, point: str = "self") -> None:
        self.store, self.index, self.point = store, index, point


def _eager_for(module: nn.Module) -> Callable[..., Any]:
    modeling = sys.modules.get(type(module).__module__)
    function = getattr(modeling, "eager_attention_forward", None)
    if function is None:
        raise UnsupportedArchitectureError(
            f"{type(module).__module__} has no eager_attention_forward to wrap for {type(module).__name__}."
        )
    return function  # type: ignore[no-any-return]


def _wrapped(name: str, module: nn.Module) -> Callable[..., Any]:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    base = name[len(PREFIX) :]
    return _eager_for(module) if base == "eager" else ALL_ATTENTION_FUNCTIONS[base]  # type: ignore[no-any-return]


def _make_function(name: str) -> Callable[..., Any]:
    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        function = _wrapped(name, module)
        owner: AttentionOwner | None = module.__dict__.get(OWNER_ATTR)
        if owner is None or not owner.store.uses(ATTENTION):
            return function(module, query, key, value, attention_mask, *args, **kwargs)

        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any) -> torch.Tensor:
            if (
                k.shape[-2] == key.shape[-2]
            ):  # no prefix (maybe a row block of a BatchSplit): as the model called
                return function(module, q, k, v, mask, *args, **kwargs)[0]  # type: ignore[no-any-return]
            # prefixed keys come with an explicit mask (never rely on is_causal with more keys than queries)
            extra = {"is_causal": False}
            bias = kwargs.get("position_bias")
            if isinstance(bias, torch.Tensor) and bias.shape[-1] < k.shape[-2]:
                # T5's relative position bias (B|1, H, T, S): the prefix keys have no position, bias 0
                front = bias.new_zeros(*bias.shape[:-1], k.shape[-2] - bias.shape[-1])
                extra["position_bias"] = torch.cat([front, bias], dim=-1)  # type: ignore[assignment]
            return function(module, q, k, v, mask, *args, **{**kwargs, **extra})[0]  # type: ignore[no-any-return]

        table = getattr(_INPUTS, "table", None)
        hidden = table.pop(id(module), None) if table else None
        inputs = AttentionInputs(
            query, key, value, attention_mask, bool(getattr(module, "is_causal", False)), call, hidden
        )
        out = owner.store.point_forward(owner.index, ATTENTION, owner.point, inputs)
        if out is None:
            return function(module, query, key, value, attention_mask, *args, **kwargs)
        return out, None

    attention.__name__ = f"{name}_attention_forward"
    return attention


def _register(name: str) -> None:
    from transformers.modeling_utils import AttentionInterface

    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _make_function(name))
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:  # older transformers build masks without this registry
        return
    base = name[len(PREFIX) :]
    if name not in AttentionMaskInterface._global_mapping and base in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])


def _attention_points(model: nn.Module, spec: ArchitectureSpec) -> list[tuple[int, str, nn.Module]]:
    """``(layer, point, module)``: each layer's self-attention (``"self"``) and, in an encoder-decoder decoder,
    its cross-attention (``"cross"``)."""
    found = []
    for index, (layer, stack) in enumerate(layer_stacks(model, spec)):
        for point, path in (("self", stack.attention), ("cross", stack.cross_attention)):
            if path is not None:
                found.append((index, point, layer.get_submodule(path)))
    return found


def _attention_modules(model: nn.Module, spec: ArchitectureSpec) -> list[nn.Module]:
    return [module for _, _, module in _attention_points(model, spec)]


def install(model: nn.Module, spec: ArchitectureSpec, store: PointHandler) -> None:
    """Record which store, layer and point each attention module of ``model`` belongs to."""
    for index, point, module in _attention_points(model, spec):
        if CAPTURE_ATTR not in module.__dict__:
            module.__dict__[CAPTURE_ATTR] = module.register_forward_pre_hook(_capture_input, with_kwargs=True)
        module.__dict__[OWNER_ATTR] = AttentionOwner(store, index, point)


def _routes_through_interface(module: nn.Module) -> bool:
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return True
    return "ALL_ATTENTION_FUNCTIONS" in source or "attention_interface" in source


def configs_of(model: nn.Module) -> list[Any]:
    """The distinct attention configs of ``model`` (those with ``_attn_implementation``; walks its modules, so take
    them once where they are read often)."""
    configs: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            configs.setdefault(id(config), config)
    return list(configs.values())


def enable(model: nn.Module, spec: ArchitectureSpec) -> None:
    """Route ``model``'s self-attention through our attention function (idempotent). Raises a ConfigError when this
    transformers version or attention implementation cannot carry an attention point."""
    modules = _attention_modules(model, spec)
    if not modules:
        raise UnsupportedArchitectureError(
            f"The ArchitectureSpec of {spec.model_types[0]!r} names no self-attention module (spec.attention)."
        )
    if not _routes_through_interface(modules[0]):
        import transformers

        raise ConfigError(
            f"{type(modules[0]).__name__} in transformers {transformers.__version__} computes attention itself "
            "instead of calling an attention function from transformers' AttentionInterface, so adapters that "
            "attach at self-attention (prefix tuning) cannot reach it. Use transformers >= 5.0 for this "
            f"architecture ({spec.model_types[0]})."
        )
    for config in configs_of(model):
        current = config._attn_implementation or "eager"
        if current.startswith(PREFIX) and current[len(PREFIX) :] in SUPPORTED:
            continue
        if current not in SUPPORTED:
            raise ConfigError(
                f"Adapters at self-attention (prefix tuning) work with attn_implementation 'sdpa' or 'eager'; this "
                f"model uses {current!r}. Load it with attn_implementation='sdpa' or call "
                "model.set_attn_implementation('sdpa') first."
            )
        _register(PREFIX + current)
        config._attn_implementation = PREFIX + current


def disable(model: nn.Module) -> None:
    """Give ``model`` back the attention implementation it had before ``enable``."""
    for config in configs_of(model):
        current = config._attn_implementation
        if isinstance(current, str) and current.startswith(PREFIX) and current[len(PREFIX) :] in SUPPORTED:
            config._attn_implementation = current[len(PREFIX) :]
    for module in model.modules():
        module.__dict__.pop(OWNER_ATTR, None)
        handle = module.__dict__.pop(CAPTURE_ATTR, None)
        if handle is not None:
            handle.remove()

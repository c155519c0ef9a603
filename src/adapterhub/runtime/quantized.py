"""Base models quantised by bitsandbytes (QLoRA): recognising their layers, reading their weights as floats, and
replacing one by a plain ``nn.Linear``.

transformers loads a model with ``BitsAndBytesConfig`` by swapping its ``nn.Linear`` layers for bitsandbytes'
``Linear4bit`` (weights a ``Params4bit``: packed 4-bit codes, NF4 or FP4, plus a ``quant_state`` holding the block
absmax scales, possibly themselves quantised: double quantisation) or ``Linear8bitLt`` (weights an ``Int8Params``:
``int8`` codes plus one scale ``SCB`` per output row). Both subclass ``nn.Linear`` (``in_features`` /
``out_features`` are the real shape), so targeting finds them as linear modules, and both run forward and backward
on their input, so adapters that only read a projection's input and output (LoRA, bottleneck, prefix) work
unchanged. What needs the base *weight* (DoRA's weight norm, (IA)³ on a projection's input, DoRA's initial
magnitude, merging) asks this module for it:

- 4-bit: ``W = dequantize_4bit(codes, quant_state)`` ``(d_out, d_in)`` in the dtype the weight had before
  quantisation (``quant_state.dtype``);
- 8-bit: ``W = codes · SCB / 127`` (row-wise absmax scaling) ``(d_out, d_in)`` in float32.

The module is detected by the class names of its weight (``Params4bit``, ``Int8Params``), so nothing here imports
bitsandbytes unless a quantised layer is actually read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError

_FOUR_BIT = "Params4bit"
_EIGHT_BIT = "Int8Params"


def quantization_of(module: nn.Module) -> str | None:
    """``"nf4"`` / ``"fp4"`` for a bitsandbytes 4-bit layer, ``"int8"`` for an 8-bit one, ``None`` otherwise."""
    weight = getattr(module, "weight", None)
    name = type(weight).__name__
    if name == _FOUR_BIT:
        state = getattr(weight, "quant_state", None)
        return str(getattr(state, "quant_type", None) or getattr(weight, "quant_type", "nf4"))
    if name == _EIGHT_BIT:
        return "int8"
    return None


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module``'s weight is stored quantised by bitsandbytes (4-bit or 8-bit)."""
    return quantization_of(module) is not None


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """The shape of the module's weight as it computes with it: ``weight.shape`` for a float layer,
    ``(out_features, in_features)`` for a quantised one (whose stored codes are packed, e.g. ``(n/2, 1)``)."""
    if is_quantized(module):
        return int(module.out_features), int(module.in_features)  # type: ignore[arg-type]
    weight: torch.Tensor = module.weight  # type: ignore[assignment]
    return int(weight.shape[0]), int(weight.shape[1])


def has_quantized(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` is a bitsandbytes-quantised layer."""
    return any(is_quantized(m) for m in model.modules())


def keep_autograd_layout(model: nn.Module) -> None:
    """Switch off bitsandbytes' CPU inference layout on every 4-bit layer of ``model``.

    bitsandbytes 0.50 converts a ``Linear4bit`` weight to a layout for its AVX512-BF16 CPU kernel at the first
    forward in eval mode without gradients; from then on ``matmul_4bit`` runs that kernel outside autograd, also in
    training, so no gradient flows through the layer to the layers before it (adapters there get wrong gradients:
    on SmolLM2, LoRA on an NF4 base stopped learning after one no-grad evaluation). With the conversion off, every
    forward takes bitsandbytes' dequantising path, which autograd follows."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            setattr(module, "support_avx512bf16_for_cpu", False)  # noqa: B010 (an nn.Module attribute)


def cpu_inference_layout_paths(model: nn.Module) -> list[str]:
    """Paths of the 4-bit layers whose weight bitsandbytes already holds in its CPU inference layout (converted
    by a no-grad eval forward before :func:`keep_autograd_layout` ran): they pass no gradient to their input."""
    return [
        path
        for path, module in model.named_modules()
        if getattr(
            getattr(getattr(module, "weight", None), "quant_state", None), "packing_format_for_cpu", False
        )
    ]


def _bnb_functional() -> Any:
    try:
        import bitsandbytes.functional as bnb_functional
    except ImportError as exc:  # pragma: no cover - a quantised model implies bitsandbytes
        raise ConfigError(
            "Reading the weights of a quantised layer needs bitsandbytes (pip install 'adapterhub[quant]')."
        ) from exc
    return bnb_functional


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The float weight ``(d_out, d_in)`` a quantised layer computes with (see the module docstring for the
    math); a new tensor, not a view: writing into it does not change the layer."""
    kind = quantization_of(module)
    weight: Any = module.weight
    if kind is None:
        raise ConfigError(f"{type(module).__name__} is not a bitsandbytes-quantised layer.")
    functional = _bnb_functional()
    if kind != "int8":
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            return _weight_by_forward(module)
        return functional.dequantize_4bit(weight.data, weight.quant_state)  # type: ignore[no-any-return]
    state = getattr(module, "state", None)
    scales = getattr(state, "SCB", None)
    if scales is None:
        scales = getattr(weight, "SCB", None)
    if scales is None:
        raise ConfigError(
            "This 8-bit layer holds no row scales (SCB): it was not quantised yet (move the model to its device "
            "first, as transformers does when loading with BitsAndBytesConfig(load_in_8bit=True))."
        )
    codes = weight.data  # (d_out, d_in) int8
    return functional.int8_vectorwise_dequant(codes, scales.to(codes.device))  # type: ignore[no-any-return]


def _weight_by_forward(module: nn.Module) -> torch.Tensor:
    """``W`` ``(d_out, d_in)`` as the layer computes it: ``forward(I) - b`` (hooks bypassed). bitsandbytes repacks a
    4-bit weight for its CPU kernel on the first no-grad eval forward, and its way back to the standard layout is
    lossy, so the layer's own forward on the identity is the faithful reading then."""
    d_in = int(module.in_features)  # type: ignore[arg-type]
    dtype = getattr(module, "compute_dtype", None) or torch.float32
    eye = torch.eye(d_in, dtype=dtype, device=module.weight.device)  # type: ignore[union-attr,arg-type]
    with torch.no_grad():
        out = type(module).forward(module, eye)  # (d_in, d_out) = Wᵀ + b
    bias = getattr(module, "bias", None)
    if bias is not None:
        out = out - bias.to(out.dtype)
    return out.t().contiguous()


def weight_reader(module: nn.Module) -> torch.Tensor | Callable[[], torch.Tensor]:
    """What a hook hands a method as the layer's weight: the weight itself for a float layer, a function that
    dequantises it for a quantised one (called only by a method that needs the weight: LoRA never pays for it)."""
    if is_quantized(module):
        return lambda: dequantized_weight(module)
    return module.weight  # type: ignore[return-value]


def float_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a float tensor: the parameter itself (a view that merging writes into) for a float
    layer, a dequantised copy for a quantised one."""
    return dequantized_weight(module) if is_quantized(module) else module.weight  # type: ignore[return-value]


def refuse_quantized(module: nn.Module, path: str, what: str, remedy: str) -> None:
    """Raise a ConfigError naming ``what`` cannot apply to the quantised layer at ``path`` and ``remedy``."""
    kind = quantization_of(module)
    if kind is not None:
        raise ConfigError(
            f"{what} cannot apply to {path!r}: its weight is quantised by bitsandbytes ({kind}). {remedy}"
        )


def dequantized_linear(module: nn.Module) -> nn.Linear:
    """A plain ``nn.Linear`` computing what the quantised ``module`` computes: weight ``dequant(W)``, the same
    bias, on the module's device, in the dtype the layer computes in (a 4-bit layer's ``compute_dtype``; else the
    dequantised weight's); frozen like the base it replaces."""
    weight = dequantized_weight(module)  # (d_out, d_in)
    compute = getattr(module, "compute_dtype", None)
    if isinstance(compute, torch.dtype) and compute.is_floating_point:
        weight = weight.to(compute)
    bias: torch.Tensor | None = getattr(module, "bias", None)
    linear = nn.Linear(
        weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias.to(weight.dtype))  # type: ignore[union-attr]
    linear.requires_grad_(False)
    linear.train(module.training)
    return linear


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


def replace_module(model: nn.Module, path: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``path`` in ``model`` in place of the module there, which keeps its hooks (the adapter
    hooks move with it: their handles still remove them); returns the old module."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    old = parent.get_submodule(name)
    for attr in _HOOK_DICTS:
        if hasattr(old, attr):
            setattr(new, attr, getattr(old, attr))
    setattr(parent, name, new)
    return old


def dequantize_modules(model: nn.Module, paths: list[str]) -> list[str]:
    """Replace each quantised module at ``paths`` by its ``dequantized_linear``; returns the paths replaced."""
    done: list[str] = []
    for path in dict.fromkeys(paths):
        module = model.get_submodule(path)
        if is_quantized(module):
            replace_module(model, path, dequantized_linear(module))
            done.append(path)
    return done

"""Preparing a k-bit (bitsandbytes-quantised) model for training adapters on it: QLoRA's recipe in one call.

``prepare_kbit_training(model)`` does what peft's ``prepare_model_for_kbit_training`` does:

1. freezes every parameter of the base model (the quantised codes cannot train; the norms, embeddings and
   biases stay as they are: only adapters train);
2. keeps the parameters that are not quantised in float32: those stored as float16 / bfloat16 (norms, embeddings,
   the LM head, biases) are cast to float32, so the small parameters around the 4-bit matmuls keep full precision
   (the quantised layers compute in their own ``compute_dtype``);
3. with ``gradient_checkpointing=True``: turns on transformers' gradient checkpointing and makes the input
   embeddings' output require gradients, so that checkpointed segments of a frozen model still carry gradients
   to the adapters inside them.

Adapters already on the model (``adapterhub.init`` first) keep whether they train; call ``train_adapter`` after.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.runtime.quantized import has_quantized, quantization_of
from adapterhub.runtime.store import STORE_ATTR

_HALF = (torch.float16, torch.bfloat16)


def prepare_kbit_training(
    model: nn.Module,
    *,
    gradient_checkpointing: bool = True,
    checkpointing_kwargs: dict[str, Any] | None = None,
    require_quantized: bool = True,
) -> nn.Module:
    """Prepare ``model`` (loaded with ``BitsAndBytesConfig``) for adapter training, in place; returns it.

    Base parameters are frozen, non-quantised float16/bfloat16 ones cast to float32, and with
    ``gradient_checkpointing`` transformers' checkpointing is enabled (``checkpointing_kwargs`` passed on, default
    ``{"use_reentrant": True}`` as peft) with input gradients on. ``require_quantized``: raise when the model has no
    bitsandbytes layer (a float model needs none of this; pass ``False`` to apply it anyway)."""
    if require_quantized and not has_quantized(model):
        raise ConfigError(
            "prepare_kbit_training: the model has no bitsandbytes-quantised layer. Load it with "
            "quantization_config=BitsAndBytesConfig(load_in_4bit=True) (or load_in_8bit=True), or pass "
            "require_quantized=False to freeze and upcast a float model anyway."
        )
    quantized = {id(m.weight) for m in model.modules() if quantization_of(m) is not None}  # type: ignore[arg-type]
    for name, param in model.named_parameters():
        if name.startswith(STORE_ATTR + "."):
            continue  # adapters and heads keep their own state
        param.requires_grad_(False)
        if param.dtype in _HALF and id(param) not in quantized:
            param.data = param.data.to(torch.float32)
    if gradient_checkpointing:
        kwargs = {"use_reentrant": True} if checkpointing_kwargs is None else dict(checkpointing_kwargs)
        if kwargs.get("use_reentrant", True):
            _inputs_require_grad(model)
        _enable_checkpointing(model, kwargs)
    return model


def _inputs_require_grad(model: nn.Module) -> None:
    """Make the input embeddings' output require gradients (reentrant checkpointing drops gradients of a segment
    whose inputs require none)."""
    enable = getattr(model, "enable_input_require_grads", None)
    if callable(enable):
        enable()
        return
    embeddings = model.get_input_embeddings()  # type: ignore[operator]
    embeddings.register_forward_hook(lambda module, args, output: output.requires_grad_(True))


def _enable_checkpointing(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """transformers' activation checkpointing (``gradient_checkpointing_enable`` before transformers 5.x)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if callable(enable):
        enable(activation_checkpointing_kwargs=kwargs)
        return
    enable = getattr(model, "gradient_checkpointing_enable", None)
    if not callable(enable):
        raise ConfigError(
            f"{type(model).__name__} has no activation_checkpointing_enable (not a transformers model); call "
            "prepare_kbit_training(model, gradient_checkpointing=False)."
        )
    enable(gradient_checkpointing_kwargs=kwargs)

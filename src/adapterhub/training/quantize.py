"""``--quantize nf4|fp4|int8``: load the base model of ``adapterhub train`` / ``evaluate`` / ``compare`` quantised
by bitsandbytes (QLoRA), as transformers does with ``BitsAndBytesConfig``.

``nf4`` / ``fp4``: 4-bit weights (NormalFloat4 / FP4) with double quantisation and float32 compute; ``int8``:
8-bit weights (LLM.int8). The base is then prepared as ``adapterhub.prepare_kbit_training`` does (frozen,
non-quantised half-precision parameters in float32; no activation checkpointing) and only adapter methods can
train on it: a method that trains base weights (e.g. ``full``) is
refused.

A run records how its base was quantised in ``training.json`` (``quantize``: :func:`model_quantization`);
``evaluate`` and ``ablate`` load the base that way unless ``--quantize`` says otherwise (``--quantize none``: the
float base).
"""

from __future__ import annotations

import argparse
from typing import Any

from adapterhub.errors import ConfigError

QUANTIZE_CHOICES = ("nf4", "fp4", "int8")
NOT_QUANTIZED = "none"


def add_quantize_argument(parser: argparse.ArgumentParser, *, recorded: bool = False) -> None:
    """Add ``--quantize`` to a command's parser (``recorded``: a command that loads a saved run, whose default
    is the quantisation the run recorded)."""
    default = (
        "as the run was trained (its training.json), else not quantised" if recorded else "not quantised"
    )
    parser.add_argument(
        "--quantize",
        choices=(*QUANTIZE_CHOICES, NOT_QUANTIZED),
        default=None,
        help="load the base model quantised by bitsandbytes (QLoRA): nf4 / fp4 (4-bit, double quant, float32 "
        f"compute) or int8; only adapter methods train on it; none: the float base (default: {default})",
    )


def model_quantization(model: Any) -> str | None:
    """How ``model``'s weights were quantised when it was loaded: ``nf4`` / ``fp4`` / ``int8`` for bitsandbytes,
    another quantisation method's name (``config.quantization_config.quant_method``), or None."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    if config is None:
        return None
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if data.get("load_in_4bit"):
        return str(data.get("bnb_4bit_quant_type") or "fp4")
    if data.get("load_in_8bit"):
        return "int8"
    return str(data.get("quant_method") or "quantized")


def resolve_quantize(requested: str | None, recorded: str | None) -> str | None:
    """The quantisation to load a saved run's base with: ``requested`` (``--quantize``; ``none``: not
    quantised), else the run's ``recorded`` one where bitsandbytes can redo it (another method's checkpoint is
    stored quantised, so loading it again reproduces it)."""
    if requested == NOT_QUANTIZED:
        return None
    if requested is not None:
        return requested
    return recorded if recorded in QUANTIZE_CHOICES else None


def quantization_config(quantize: str | None) -> Any:
    """The ``BitsAndBytesConfig`` for ``quantize`` (``None`` or ``"none"``: none)."""
    if quantize is None or quantize == NOT_QUANTIZED:
        return None
    if quantize not in QUANTIZE_CHOICES:
        raise ConfigError(f"--quantize {quantize!r}: choose one of {', '.join(QUANTIZE_CHOICES)}.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--quantize needs bitsandbytes: pip install 'adapterhub[quant]' (or drop --quantize)."
        ) from None
    import torch
    import transformers

    if quantize == "int8":
        return transformers.BitsAndBytesConfig(load_in_8bit=True)
    return transformers.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantize,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )


def check_method_fits(method: str, quantize: str | None) -> None:
    """Raise when ``method`` would train base weights of a quantised model."""
    from adapterhub.training.methods import parse_method

    if quantize not in (None, NOT_QUANTIZED) and not parse_method(method).is_adapter:
        raise ConfigError(
            f"--method {method} trains the base model's weights, which --quantize {quantize} stores as frozen "
            "integer codes; use an adapter method (e.g. --method adapter:lora) or drop --quantize."
        )

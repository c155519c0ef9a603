"""``--quantize nf4|fp4|int8``: load the base model of ``adapterhub train`` / ``evaluate`` / ``compare`` quantised
by bitsandbytes (QLoRA), as transformers does with ``BitsAndBytesConfig``.

``nf4`` / ``fp4``: 4-bit weights (NormalFloat4 / FP4) with double quantisation and float32 compute; ``int8``:
8-bit weights (LLM.int8). The base is then prepared as ``adapterhub.prepare_kbit_training`` does (frozen,
non-quantised half-precision parameters in float32; no activation checkpointing) and only adapter methods can
train on it: a method that trains base weights (e.g. ``full``) is
refused.
"""

from __future__ import annotations

import argparse
from typing import Any

from adapterhub.errors import ConfigError

QUANTIZE_CHOICES = ("nf4", "fp4", "int8")


def add_quantize_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--quantize`` to a command's parser."""
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="load the base model quantised by bitsandbytes (QLoRA): nf4 / fp4 (4-bit, double quant, float32 "
        "compute) or int8; only adapter methods train on it (default: not quantised)",
    )


def quantization_config(quantize: str | None) -> Any:
    """The ``BitsAndBytesConfig`` for ``quantize`` (``None``: none)."""
    if quantize is None:
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

    if quantize is not None and not parse_method(method).is_adapter:
        raise ConfigError(
            f"--method {method} trains the base model's weights, which --quantize {quantize} stores as frozen "
            "integer codes; use an adapter method (e.g. --method adapter:lora) or drop --quantize."
        )

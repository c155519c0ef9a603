"""Tiny random Llama models quantised by bitsandbytes on the CPU (QLoRA tests): saved once, loaded with
transformers' BitsAndBytesConfig as a user would."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import transformers

from tiny_models import tiny_config

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install -e '.[quant]')")

VARIANTS = [  # (quant type, double quant, compute dtype)
    ("nf4", False, torch.float32),
    ("nf4", True, torch.bfloat16),
    ("fp4", False, torch.bfloat16),
    ("fp4", True, torch.float32),
]


def save_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """A tiny random Llama (widths multiples of 64, bitsandbytes' block size) saved to ``directory``."""
    torch.manual_seed(seed)
    config = tiny_config("llama", hidden_size=64, intermediate_size=128)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def load_quantized(
    directory: Path,
    quant_type: str = "nf4",
    double_quant: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    dtype: torch.dtype = torch.float32,
) -> torch.nn.Module:
    """The saved model loaded 4-bit (``quant_type`` ``nf4``/``fp4``) or 8-bit (``int8``), its other parameters in
    ``dtype``."""
    if quant_type == "int8":
        config = transformers.BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant_type,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.LlamaForCausalLM.from_pretrained(
            directory, quantization_config=config, dtype=dtype
        )


def token_batch(seed: int = 3, vocab: int = 99) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, 7), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

#!/usr/bin/env python
"""Generate golden fixtures for ViT and the two-tower CLIPModel with the public ``adapters`` library (1.3.0).

Run inside the separate virtual environment made by ``setup_adapters_venv.sh`` (transformers 4.57)::

    .venv-adapters/bin/python scripts/compat/make_adapters_vision_fixtures.py [--out tests/fixtures/adapters_lib]

Each case directory holds a tiny random plain base model (``base/``, saved by transformers 4.57: ViT in its 4.57
module layout), what ``adapters`` writes for one adapter (``adapter/``, no head) and ``expected.json`` with the
fixed inputs and the outputs ``adapters`` computed (eval mode, float32): ViT's ``last_hidden_state``; CLIP's
``text_embeds``, ``image_embeds`` and ``logits_per_image``. Cases: a bottleneck adapter (``seq_bn``, and
``double_seq_bn`` on ViT) and LoRA (q, k, v + intermediate + output) on each. Every adapter parameter is
overwritten with seeded noise before anything is computed or saved (LoRA's B starts at zero).

This script only uses ``adapters``, ``transformers`` and ``torch``; it never imports ``adapterhub``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import adapters
import torch
import transformers
from adapters import DoubleSeqBnConfig, LoRAConfig, SeqBnConfig

BASE_SEED = 1234
INPUT_SEED = 4321
MIN_EFFECT = 1e-2
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "adapters_lib"

VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    image_size=16,
    patch_size=4,
)
TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=20,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def make_base(arch: str, base_dir: Path):
    torch.manual_seed(BASE_SEED)
    if arch == "vit":
        model = transformers.ViTModel(transformers.ViTConfig(**VISION), add_pooling_layer=False)
    else:
        config = transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)
        model = transformers.CLIPModel(config)
    model.eval()
    model.save_pretrained(str(base_dir), safe_serialization=True)
    return model


def make_inputs(arch: str) -> dict:
    gen = torch.Generator().manual_seed(INPUT_SEED)
    pixels = torch.randn(3, 3, 16, 16, generator=gen)
    if arch == "vit":
        return {"pixel_values": pixels}
    ids = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 8, 9, 10, 11, 2], [1, 12, 2, 0, 0, 0]])
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": (ids != 0).long()}


def outputs(arch: str, model, inputs) -> dict:
    with torch.no_grad():
        out = model(**inputs)
    if arch == "vit":
        return {"last_hidden_state": out.last_hidden_state}
    return {
        "text_embeds": out.text_embeds,
        "image_embeds": out.image_embeds,
        "logits_per_image": out.logits_per_image,
    }


def randomize(named_params, gen: torch.Generator):
    """weights N(0, 0.2), biases and vectors N(0, 0.1), in sorted-name order."""
    with torch.no_grad():
        for name, param in sorted(named_params, key=lambda kv: kv[0]):
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
            param.copy_(0.1 * noise if name.endswith("bias") or param.dim() == 1 else 0.2 * noise)


def fresh_case_dir(out: Path, case: str) -> Path:
    """``out/case``, emptied."""
    case_dir = out / case
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    return case_dir


def add_random_adapter(base, arch: str, case: str, make_config, seed: int):
    """Put ``base`` under ``adapters.init``, add adapter ``a`` (``make_config()``), activate it, overwrite its
    parameters with seeded noise (:func:`randomize`) and set eval mode; returns ``(name, [(key, parameter)])``."""
    adapters.init(base)
    base.config.name_or_path = f"tiny-random-{arch}"
    name = "a"
    base.add_adapter(name, config=make_config())
    base.set_active_adapters(name)
    params = [(k, p) for k, p in base.named_parameters() if f".{name}." in k]
    assert params, f"{case}: no adapter parameters"
    randomize(params, torch.Generator().manual_seed(seed))
    base.eval()
    return name, params


def write_expected(
    base, case_dir: Path, case: str, arch: str, name: str, params, inputs, adapted, plain, **extra
):
    """Save adapter ``name`` of ``base`` into ``case_dir/adapter`` (no head) and write ``expected.json``: the inputs,
    the outputs with and without the adapter, its parameter keys and config, the library versions and ``extra``."""
    base.save_adapter(str(case_dir / "adapter"), name, with_head=False)
    expected = {
        "case": case,
        "arch": arch,
        "adapter_name": name,
        **extra,
        "inputs": {k: v.tolist() for k, v in inputs.items()},
        **{k: v.tolist() for k, v in adapted.items()},
        **{f"{k}_without_adapter": v.tolist() for k, v in plain.items()},
        "adapter_keys": sorted(k for k, _ in params),
        "config": json.loads((case_dir / "adapter" / "adapter_config.json").read_text())["config"],
        "adapters_version": adapters.__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
    }
    (case_dir / "expected.json").write_text(json.dumps(expected, indent=2, sort_keys=True) + "\n")


def fixture_main(argv, description: str, cases: dict, run_case) -> int:
    """The command line of a fixture script: ``--out``, ``--case`` (repeatable); ``run_case(out, case)`` for each."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--case", action="append", choices=sorted(cases))
    args = parser.parse_args(argv)
    for case in args.case or list(cases):
        run_case(args.out, case)
    return 0


CASES = {
    # case: (arch, config factory, seed)
    "vit_seq_bn": ("vit", lambda: SeqBnConfig(reduction_factor=4), 901),
    "vit_double_seq_bn": ("vit", lambda: DoubleSeqBnConfig(reduction_factor=4), 902),
    "vit_lora_qkv_ffn": (
        "vit",
        lambda: LoRAConfig(
            r=4, alpha=8, attn_matrices=["q", "k", "v"], intermediate_lora=True, output_lora=True
        ),
        903,
    ),
    "clip_seq_bn": ("clip", lambda: SeqBnConfig(reduction_factor=4), 911),
    "clip_lora_qkv_ffn": (
        "clip",
        lambda: LoRAConfig(
            r=4, alpha=8, attn_matrices=["q", "k", "v"], intermediate_lora=True, output_lora=True
        ),
        912,
    ),
}


def run_case(out: Path, case: str) -> None:
    arch, make_config, seed = CASES[case]
    case_dir = fresh_case_dir(out, case)
    base = make_base(arch, case_dir / "base")
    inputs = make_inputs(arch)
    plain = outputs(arch, base, inputs)
    name, params = add_random_adapter(base, arch, case, make_config, seed)
    adapted = outputs(arch, base, inputs)
    key = next(iter(adapted))
    effect = (adapted[key] - plain[key]).abs().max().item()
    assert effect > MIN_EFFECT, f"{case}: the adapter changes {key} by only {effect}"
    write_expected(base, case_dir, case, arch, name, params, inputs, adapted, plain)
    print(f"{case}: the adapter changes {key} by up to {effect:.4f}")


def main(argv=None) -> int:
    return fixture_main(argv, __doc__, CASES, run_case)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Generate golden fixtures for Whisper (``WhisperForConditionalGeneration``) with the public ``adapters`` library.

Run inside the separate virtual environment made by ``setup_adapters_venv.sh`` (transformers 4.57)::

    .venv-adapters/bin/python scripts/compat/make_adapters_whisper_fixtures.py [--out tests/fixtures/adapters_lib]

Each case directory holds a tiny random plain base model (``base/``, saved by transformers 4.57), what ``adapters``
writes for one adapter (``adapter/``, no head) and ``expected.json`` with the fixed inputs (log-mel features and
decoder token ids) and the outputs ``adapters`` computed (eval mode, float32): the decoder's ``logits`` and the
``encoder_last_hidden_state``. Cases: a bottleneck adapter (``seq_bn``; with ``cross_adapter`` on, so the decoder's
cross-attention carries one too) and LoRA (q, k, v + intermediate + output; that library puts the q/k/v LoRA on
every Whisper attention, the decoder's cross-attention included) and prefix tuning (``encoder_prefix``, ``self_prefix`` and ``cross_prefix`` pools,
each its own MLP; computed with eager attention, see ``CASES``). Every adapter parameter is overwritten with
seeded noise before anything is computed or saved.

This script only uses ``adapters``, ``transformers`` and ``torch``; it never imports ``adapterhub``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import transformers
from adapters import LoRAConfig, PrefixTuningConfig, SeqBnConfig
from make_adapters_vision_fixtures import add_random_adapter, fixture_main, fresh_case_dir, write_expected

BASE_SEED = 1234
INPUT_SEED = 4321
MIN_EFFECT = 1e-2
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "adapters_lib"
OUTPUTS = ("logits", "encoder_last_hidden_state")

WHISPER = dict(
    vocab_size=99,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    num_mel_bins=8,
    max_source_positions=10,
    max_target_positions=20,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)

CASES = {
    # case: (config factory, seed[, attention implementation])
    "whisper_seq_bn": (lambda: SeqBnConfig(reduction_factor=4, cross_adapter=True), 921),
    "whisper_lora_qkv_ffn": (
        lambda: LoRAConfig(
            r=4, alpha=8, attn_matrices=["q", "k", "v"], intermediate_lora=True, output_lora=True
        ),
        922,
    ),
    # three reparametrisation MLPs: encoder self-attention, decoder self-attention, decoder cross-attention. Eager
    # attention: under that library's default (sdpa) the decoder's prefixed self-attention gives other logits than
    # its own eager path (by 0.088 here; the encoder states agree), the causal mask apparently aligned top-left
    # once the prefix lengthens the keys
    "whisper_prefix": (lambda: PrefixTuningConfig(prefix_length=3, bottleneck_size=8), 923, "eager"),
}


def make_base(base_dir: Path, attn: str | None = None):
    torch.manual_seed(BASE_SEED)
    config = transformers.WhisperConfig(**WHISPER)
    if attn is not None:
        config._attn_implementation = attn
    model = transformers.WhisperForConditionalGeneration(config)
    model.eval()
    model.save_pretrained(str(base_dir), safe_serialization=True)
    return model


def make_inputs() -> dict:
    gen = torch.Generator().manual_seed(INPUT_SEED)
    features = torch.randn(3, 8, 20, generator=gen)  # (batch, mel bins, frames): 10 encoder positions
    decoder = torch.randint(3, 99, (3, 5), generator=gen)
    decoder[:, 0] = 1  # the decoder start token
    return {"input_features": features, "decoder_input_ids": decoder}


def outputs(model, inputs) -> dict:
    with torch.no_grad():
        out = model(**inputs)
    return {key: getattr(out, key) for key in OUTPUTS}


def run_case(out: Path, case: str) -> None:
    make_config, seed, *attn = CASES[case]
    case_dir = fresh_case_dir(out, case)
    base = make_base(case_dir / "base", *attn)
    inputs = make_inputs()
    plain = outputs(base, inputs)
    name, params = add_random_adapter(base, "whisper", case, make_config, seed)
    adapted = outputs(base, inputs)
    effect = min((adapted[k] - plain[k]).abs().max().item() for k in OUTPUTS)
    assert effect > MIN_EFFECT, f"{case}: the adapter changes an output by only {effect}"
    extra = {"attn_implementation": attn[0] if attn else None}
    write_expected(base, case_dir, case, "whisper", name, params, inputs, adapted, plain, **extra)
    print(f"{case}: the adapter changes logits and encoder states by at least {effect:.4f}")


def main(argv=None) -> int:
    return fixture_main(argv, __doc__, CASES, run_case)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Generate golden VeRA fixtures with the public ``adapters`` library (1.3.0).

Run inside the separate virtual environment made by ``setup_adapters_venv.sh``::

    .venv-adapters/bin/python scripts/compat/make_adapters_vera_fixtures.py [--out tests/fixtures/adapters_lib]

It extends ``make_adapters_fixtures.py`` (same tiny base models, inputs and helpers). That library's VeRA
(``VeraConfig``: a ``LoRAConfig`` with ``vera_d`` / ``vera_b``) keeps one frozen random pair ``lora_A (r, d_in)`` /
``lora_B (d_out, r)`` per adapter in ``shared_parameters.NAME`` (saved with the adapter) and trains, per
projection, full matrices ``vera_D (r, r)`` and ``vera_B (d_out, d_out)`` (initialised ``vera_d · I`` and
``vera_b · I``); the update is ``alpha / r · vera_B lora_B vera_D lora_A x``. The pair has the shape of the first
adapted projection and is not sliced, so every adapted projection must have one shape (BERT q, v; Llama k, v
with grouped-query heads; GPT-2 ``c_fc`` only: its fused ``c_attn`` has no VeRA path there).

Each case directory holds ``base/``, the adapter as that library saves it (``adapter/``) and ``expected.json``
with the fixed inputs and the base model's ``last_hidden_state`` (eval mode, float32), without the adapter, and
after that library loads the saved adapter again into a fresh model (``last_hidden_state_reloaded``). Every
``vera_D`` / ``vera_B`` (and gate) is overwritten with seeded noise first (full matrices, as training makes them),
every DVoRA magnitude multiplied by ``1 + 0.2 · N(0, 1)``.

This script only uses ``adapters``, ``transformers`` and ``torch``; it never imports ``adapterhub``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from adapters import VeraConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_adapters_fixtures import (
    ATTN_IMPLEMENTATION,
    base_stats,
    check_effect,
    fresh_case_dir,
    hidden_for,
    load_adapter_model,
    make_base,
    make_inputs,
    randomize,
    read_config,
    run_method_cases,
    versions,
    write_json,
)
from make_adapters_fixtures import (
    hidden_reloaded as reloaded,
)

CASES = {
    # case: (arch, config factory, seed)
    "bert_vera": ("bert", lambda: VeraConfig(r=4, alpha=8, attn_matrices=["q", "v"]), 1401),
    "llama_vera": (
        "llama",
        lambda: VeraConfig(r=3, alpha=3, attn_matrices=["k", "v"], vera_d=0.5, vera_b=0.2, leave_out=[0]),
        1402,
    ),
    "gpt2_vera": (
        "gpt2",
        lambda: VeraConfig(r=5, alpha=10, selfattn_lora=False, intermediate_lora=True),
        1403,
    ),
    # gated VeRA: the gate replaces alpha / r
    "bert_vera_gated": (
        "bert",
        lambda: VeraConfig(r=4, alpha=8, attn_matrices=["q", "v"], use_gating=True),
        1404,
    ),
    # DVoRA: alpha / r = 2 (the norm leaves it out) and BERT's biases (scaled by m / norm too)
    "bert_dvora": ("bert", lambda: VeraConfig(r=4, alpha=8, attn_matrices=["q", "v"], use_dora=True), 1405),
    "llama_dvora_gated": (
        "llama",
        lambda: VeraConfig(
            r=3, alpha=3, attn_matrices=["k", "v"], vera_b=0.2, use_dora=True, use_gating=True
        ),
        1406,
    ),
}


def vera_params(model, name: str):
    """Every projection's ``vera_D`` / ``vera_B`` of adapter ``name`` (the shared pair is left as drawn), and with
    ``use_gating`` / ``use_dora`` its ``gate.weight`` / ``gate.bias`` and ``m.weight``."""
    tag = f".loras.{name}."
    out = [(k, p) for k, p in model.named_parameters() if tag in k]
    allowed = ("vera_D", "vera_B", "gate.weight", "gate.bias", "m.weight")
    assert out and all(k.endswith(allowed) for k, _ in out), [k for k, _ in out]
    return out


def perturb_magnitudes(params, gen: torch.Generator) -> None:
    """DVoRA's ``m`` (started at ``‖W‖`` per row) times ``1 + 0.2 · N(0, 1)``, in sorted-name order."""
    with torch.no_grad():
        for _, param in sorted(params, key=lambda kv: kv[0]):
            param.mul_(1.0 + 0.2 * torch.randn(param.shape, generator=gen, dtype=param.dtype))


def vera_case(out: Path, case: str, arch: str, config, seed: int) -> None:
    name = "vera"
    case_dir = fresh_case_dir(out, case)
    input_ids, attention_mask = make_inputs()
    base_model = make_base(arch, case_dir / "base")
    attn = ATTN_IMPLEMENTATION.get(arch)
    load_kwargs = {"attn_implementation": attn} if attn else {}
    model = load_adapter_model(case_dir / "base", base_model, input_ids, attention_mask, **load_kwargs)
    torch.manual_seed(seed)  # the shared lora_A / lora_B come from the global generator
    model.add_adapter(name, config=config)
    model.set_active_adapters(name)
    params = vera_params(model, name)
    gen = torch.Generator().manual_seed(seed)
    randomize([(k, p) for k, p in params if not k.endswith("m.weight")], gen)
    perturb_magnitudes([(k, p) for k, p in params if k.endswith("m.weight")], gen)
    model.eval()

    hidden = hidden_for(model, input_ids, attention_mask)
    model.set_active_adapters(None)
    hidden_plain = hidden_for(model, input_ids, attention_mask)
    effect = check_effect(hidden, hidden_plain, case)
    model.save_adapter(str(case_dir / "adapter"), name, with_head=False)

    hidden_reloaded = reloaded(case_dir, input_ids, attention_mask, **load_kwargs)
    reload_diff = (hidden_reloaded - hidden).abs().max().item()
    assert reload_diff < 1e-5, f"{case}: that library's own reload differs by {reload_diff}"

    expected = {
        "case": case,
        "setup": {"type": "vera", "adapter": name, "adapter_dir": "adapter"},
        "adapter_name": name,
        "model_type": model.config.model_type,
        "attn_implementation": attn or "default",
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "last_hidden_state": hidden.tolist(),
        "last_hidden_state_without_adapter": hidden_plain.tolist(),
        "last_hidden_state_reloaded": hidden_reloaded.tolist(),
        **base_stats(base_model, input_ids, attention_mask),
        "config": read_config(case_dir / "adapter" / "adapter_config.json")["config"],
        **versions(),
    }
    write_json(case_dir / "expected.json", expected)
    print(
        f"{case}: adapter changes last_hidden_state by up to {effect:.4f}; reloaded differs by {reload_diff:.2e}"
    )


def main(argv=None) -> int:
    return run_method_cases(argv, __doc__, CASES, vera_case)


if __name__ == "__main__":
    sys.exit(main())

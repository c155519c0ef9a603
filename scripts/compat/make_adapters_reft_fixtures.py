#!/usr/bin/env python
"""Generate golden ReFT fixtures (LoReFT, NoReFT, DiReFT) with the public ``adapters`` library (1.3.0).

Run inside the separate virtual environment made by ``setup_adapters_venv.sh``::

    .venv-adapters/bin/python scripts/compat/make_adapters_reft_fixtures.py [--out tests/fixtures/adapters_lib]

It extends ``make_adapters_fixtures.py`` (same tiny base models, inputs and helpers). Each case directory holds
``base/``, the adapter as that library saves it (``adapter/``) and ``expected.json`` with the fixed inputs and the
base model's ``last_hidden_state`` (eval mode, float32): with the attention mask (row 2 right-padded), without one,
with the same rows left-padded (``attention_mask_left`` / ``input_ids_left``), and after that library loads the
saved adapter again into a fresh model (``last_hidden_state_reloaded``: its saved config has no
``subtract_projection``, so a DiReFT adapter comes back with the projection subtracted). Every ReFT parameter is
overwritten with seeded noise first.

This script only uses ``adapters``, ``transformers`` and ``torch``; it never imports ``adapterhub``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from adapters import DiReftConfig, LoReftConfig, NoReftConfig

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
    "bert_loreft": ("bert", lambda: LoReftConfig(prefix_positions=2, suffix_positions=1, r=2), 1301),
    "bert_direft": ("bert", lambda: DiReftConfig(prefix_positions=3, suffix_positions=0, r=2), 1302),
    "llama_noreft": (
        "llama",
        lambda: NoReftConfig(
            prefix_positions=1, suffix_positions=2, r=2, tied_weights=True, non_linearity="tanh", layers=[1]
        ),
        1303,
    ),
    "gpt2_loreft": ("gpt2", lambda: LoReftConfig(prefix_positions=2, suffix_positions=2, r=3), 1304),
}


def reft_params(model, name: str):
    """The ReFT parameters of adapter ``name`` except an orthogonal projection's ``original`` (noise there breaks
    the parametrization: its diagonal carries signs; ``randomize_orthogonal`` sets those projections)."""
    tag = f".refts.{name}."
    out = [(k, p) for k, p in model.named_parameters() if tag in k and not k.endswith(".original")]
    assert out, f"no ReFT parameters found for {name!r}"
    return out


def randomize_orthogonal(model, name: str, gen: torch.Generator) -> None:
    """Give every orthogonal projection ``R`` (r, d) seeded orthonormal rows (assigned through the
    parametrization's ``right_inverse``), in module-name order."""
    modules = sorted(
        (path, module)
        for path, module in model.named_modules()
        if f".refts.{name}." in f"{path}."
        and path.endswith(".projection")
        and hasattr(module, "parametrizations")
    )
    with torch.no_grad():
        for _, module in modules:
            r, d = module.weight.shape
            q, _ = torch.linalg.qr(torch.randn(d, r, generator=gen))  # (d, r) orthonormal columns
            module.weight = q.T.contiguous()


def left_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows with their padding moved to the front."""
    ids, mask = input_ids.clone(), attention_mask.clone()
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        ids[row] = torch.cat([input_ids[row, n:], input_ids[row, :n]])
        mask[row] = torch.cat([attention_mask[row, n:], attention_mask[row, :n]])
    return ids, mask


def reft_case(out: Path, case: str, arch: str, config, seed: int) -> None:
    name = "reft"
    case_dir = fresh_case_dir(out, case)
    input_ids, attention_mask = make_inputs()
    ids_left, mask_left = left_padded(input_ids, attention_mask)
    base_model = make_base(arch, case_dir / "base")
    attn = ATTN_IMPLEMENTATION.get(arch)
    load_kwargs = {"attn_implementation": attn} if attn else {}
    model = load_adapter_model(case_dir / "base", base_model, input_ids, attention_mask, **load_kwargs)
    model.add_adapter(name, config=config)
    model.set_active_adapters(name)
    gen = torch.Generator().manual_seed(seed)
    randomize(reft_params(model, name), gen)
    randomize_orthogonal(model, name, gen)
    model.eval()

    hidden = hidden_for(model, input_ids, attention_mask)
    hidden_no_mask = hidden_for(model, input_ids)
    hidden_left = hidden_for(model, ids_left, mask_left)
    model.set_active_adapters(None)
    hidden_plain = hidden_for(model, input_ids, attention_mask)
    effect = check_effect(hidden, hidden_plain, case)
    model.save_adapter(str(case_dir / "adapter"), name, with_head=False)

    hidden_reloaded = reloaded(case_dir, input_ids, attention_mask, **load_kwargs)

    expected = {
        "case": case,
        "setup": {"type": "reft", "adapter": name, "adapter_dir": "adapter"},
        "adapter_name": name,
        "model_type": model.config.model_type,
        "attn_implementation": attn or "default",
        "input_ids": input_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "input_ids_left": ids_left.tolist(),
        "attention_mask_left": mask_left.tolist(),
        "last_hidden_state": hidden.tolist(),
        "last_hidden_state_no_attention_mask": hidden_no_mask.tolist(),
        "last_hidden_state_left": hidden_left.tolist(),
        "last_hidden_state_without_adapter": hidden_plain.tolist(),
        "last_hidden_state_reloaded": hidden_reloaded.tolist(),
        "subtract_projection": bool(config.subtract_projection),
        **base_stats(base_model, input_ids, attention_mask),
        "config": read_config(case_dir / "adapter" / "adapter_config.json")["config"],
        **versions(),
    }
    write_json(case_dir / "expected.json", expected)
    reload_diff = (hidden_reloaded - hidden).abs().max().item()
    print(
        f"{case}: adapter changes last_hidden_state by up to {effect:.4f}; reloaded differs by {reload_diff:.2e}"
    )


def main(argv=None) -> int:
    return run_method_cases(argv, __doc__, CASES, reft_case)


if __name__ == "__main__":
    sys.exit(main())

"""The `adapters` library's side of ``bench/methods/param_counts.py``. Runs under ``.venv-adapters`` (`adapters`
1.3.0, transformers 4.57) and imports only that library, torch and transformers.

For each model (``bert-base``: ``BertModel(BertConfig())``, random init; or a model directory) and each config in
``CONFIGS`` it builds a fresh ``AutoModel`` (no head), calls ``adapters.init(model)`` and
``model.add_adapter("m", config=...)``, and counts the adapter's trainable parameters two ways: the unique
parameters whose name contains the adapter name (``named`` — the number reported), and the library's own
``model.adapter_summary(as_dict=True)`` ``#param`` (``summary``; it includes ``shared_parameters``, e.g. the
Compacter's shared PHM rule). Prints one JSON object ``{"versions": {...}, "counts": {model: {config: {...}}}}``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch
import transformers

NAME = "m"


def configs() -> dict[str, Callable[[], Any]]:
    import adapters

    return {
        "pfeiffer": lambda: adapters.SeqBnConfig(),
        "houlsby": lambda: adapters.DoubleSeqBnConfig(),
        # adapterhub's bapna_firat preset; `adapters` has no preset of that name, this is its BnConfig spelling
        "bapna_firat": lambda: adapters.BnConfig(
            mh_adapter=False,
            output_adapter=True,
            reduction_factor=16,
            non_linearity="relu",
            original_ln_before=True,
            original_ln_after=False,
            residual_before_ln=False,
            ln_before=True,
        ),
        "parallel": lambda: adapters.ParBnConfig(),
        "compacter": lambda: adapters.CompacterConfig(),
        "compacter++": lambda: adapters.CompacterPlusPlusConfig(),
        "lora": lambda: adapters.LoRAConfig(r=8, alpha=8),
        "dora": lambda: adapters.DoRAConfig(r=8, alpha=8),
        "ia3": lambda: adapters.IA3Config(),
        "prefix_tuning": lambda: adapters.PrefixTuningConfig(),
        "prefix_tuning (flat)": lambda: adapters.PrefixTuningConfig(),
    }


def build(model: str) -> torch.nn.Module:
    if model == "bert-base":
        return transformers.BertModel(transformers.BertConfig())
    return transformers.AutoModel.from_pretrained(model)


def count(model_spec: str, key: str, make: Callable[[], Any]) -> dict[str, int]:
    import adapters

    torch.manual_seed(0)
    model: Any = build(model_spec)
    adapters.init(model)
    model.add_adapter(NAME, config=make())
    if key.endswith("(flat)"):
        model.eject_prefix_tuning(NAME)
    model.train_adapter(NAME)
    seen: set[int] = set()
    named = 0
    for n, p in model.named_parameters():
        if NAME in n.split(".") and id(p) not in seen:  # "m" as a whole path component
            seen.add(id(p))
            named += p.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rows = model.adapter_summary(as_dict=True)
    summary = next(r["#param"] for r in rows if r["name"] == NAME)
    return {"named": named, "summary": summary, "trainable": trainable}


def main() -> None:
    import adapters

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="bert-base or a model directory")
    args = parser.parse_args()
    torch.set_num_threads(1)
    counts = {m: {k: count(m, k, make) for k, make in configs().items()} for m in args.model}
    versions = {
        "adapters": adapters.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    print(json.dumps({"versions": versions, "counts": counts}))


if __name__ == "__main__":
    main()

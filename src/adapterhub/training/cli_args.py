"""The flags and helpers the training commands share (``train``, ``evaluate``, ``ablate``, ``compare``).

Argument groups (data, model, training), loading the task a command names, turning flags into a
:class:`~adapterhub.training.config.TrainConfig`, and the one-line run summary. Torch and transformers are imported
inside the functions that need them, so building the parser stays light.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from adapterhub.errors import ConfigError

METHODS_HELP = (
    "what trains: full, head, topk:K, layernorm or adapter:<config> (e.g. adapter:pfeiffer, "
    "'adapter:pfeiffer[reduction_factor=16]', adapter:houlsby; any preset by name: lora, ia3, adalora, loreft, "
    "noreft, direft, oft, boft, ln_tuning, loha, lokr, vera, ...)"
)

# ---------------------------------------------------------------------------------- argument types and groups


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        required=required,
        help="a task directory (train.jsonl/dev.jsonl), a .jsonl/.csv/.tsv file, a saved `datasets` directory, "
        "hf:NAME, or a data set name (a folder of ../shared/data, or rotten_tomatoes)",
    )
    group.add_argument(
        "--kind",
        choices=("classification", "regression", "multilabel", "multiple_choice", "generation", "ctc"),
        help="task kind (default: from task.json or the columns; {audio, text} rows: ctc, speech recognition)",
    )
    group.add_argument("--text-column", default="text")
    group.add_argument("--text-pair-column", default=None)
    group.add_argument("--label-column", default="label")
    group.add_argument("--choices-column", default="choices")
    group.add_argument(
        "--image-column",
        default=None,
        help="the datasets.Image column of an hf: / saved dataset (default: found by its feature type)",
    )
    group.add_argument(
        "--audio-column",
        default=None,
        help="the datasets.Audio column of an hf: / saved dataset (default: found by its feature type)",
    )
    group.add_argument(
        "--train-limit", type=positive_int, help="use a seeded sample of this many training rows"
    )
    group.add_argument(
        "--dev-limit",
        type=positive_int,
        help="use a seeded sample of this many dev rows (generation: the rows decoded at each evaluation)",
    )


def add_model_arguments(parser: argparse.ArgumentParser, default_note: str) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help=f"model directory, hub name or packaged model (minilm, smollm2) (default: {default_note})",
    )
    parser.add_argument(
        "--threads", type=positive_int, help="CPU threads for torch (default: torch's choice)"
    )


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training")
    group.add_argument(
        "--lr", type=positive_float, help="peak learning rate (default: 2e-5 full/topk, else 1e-3)"
    )
    group.add_argument("--epochs", type=positive_float, default=3.0)
    group.add_argument(
        "--max-steps", type=positive_int, help="stop after this many updates (overrides --epochs)"
    )
    group.add_argument("--batch-size", type=positive_int, default=32, help="per process")
    group.add_argument("--eval-batch-size", type=positive_int, default=64)
    group.add_argument("--max-length", type=positive_int, default=128, help="tokens per text (truncated)")
    group.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per update")
    group.add_argument(
        "--init-batches",
        "--eva-batches",
        dest="init_batches",
        type=positive_int,
        default=16,
        help="adapter:lora[init=eva|corda|lora_ga]: the init's data pass reads the first N training batches (default 16; "
        "--eva-batches is the same option)",
    )
    group.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of updates spent warming up")
    group.add_argument("--weight-decay", type=float, default=0.0)
    group.add_argument("--patience", type=positive_int, help="stop after this many evaluations without gain")
    group.add_argument(
        "--eval-every", type=positive_int, help="evaluate every N updates (default: each epoch)"
    )
    group.add_argument(
        "--metric", help="dev metric for early stopping and the best checkpoint (default: per kind)"
    )
    group.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    group.add_argument(
        "--pooling",
        choices=("first", "last", "mean"),
        default=None,
        help="head pooling (default: mean over the real frames for audio rows, else the first token)",
    )
    group.add_argument("--seed", type=int, default=42)
    group.add_argument(
        "--group-by-length",
        action="store_true",
        help="batch rows of similar length together (less padding, faster; same examples per epoch)",
    )
    group.add_argument("--no-progress", action="store_true", help="no progress bars")
    group.add_argument(
        "--gradient-checkpointing",
        nargs="?",
        const="non-reentrant",
        choices=("non-reentrant", "reentrant"),
        help="recompute each layer's activations in the backward pass (less memory, ~1 more forward); "
        "the flag alone is non-reentrant, `--gradient-checkpointing reentrant` the use_reentrant variant",
    )
    chat = parser.add_argument_group("generation tasks (a causal LM with a chat template)")
    chat.add_argument(
        "--train-on-prompt", action="store_true", help="loss on every token, not only the assistant responses"
    )
    chat.add_argument(
        "--last-turn-only", action="store_true", help="loss on the last assistant turn only (multi-turn rows)"
    )
    chat.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="several examples per row up to --max-length (default: on where exact; prefix and prompt tuning "
        "train unpacked)",
    )
    chat.add_argument(
        "--loss-chunk-size",
        type=non_negative_int,
        default=512,
        metavar="N",
        help="run the LM head and the loss on N loss-carrying positions at a time, never holding the full "
        "(batch, seq, vocab) logits (default 512; 0: the full logits; same loss and gradients)",
    )
    chat.add_argument(
        "--max-new-tokens",
        type=positive_int,
        help="tokens generated per dev answer (default: the longest gold answer's tokens + 4)",
    )


# --------------------------------------------------------------------- from flags to data, config and loaders


def load_data(args: argparse.Namespace) -> Any:
    from adapterhub.data import load_task

    try:
        task = load_task(
            args.data,
            kind=args.kind,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            choices_column=args.choices_column,
            image_column=getattr(args, "image_column", None),
            audio_column=getattr(args, "audio_column", None),
        )
    except ConfigError as error:
        raise ConfigError(with_cli_flags(str(error))) from None
    if args.train_limit or args.dev_limit:
        task = task.subset(train=args.train_limit, dev=args.dev_limit, seed=getattr(args, "seed", 0))
    return task


_COLUMN_KEYWORD = re.compile(
    r"\b(text_column|text_pair_column|label_column|choices_column|image_column|audio_column)='<column>' to load_task"
)

_KIND_KEYWORD = re.compile(r"\bkind=(?:'(\w+)'|\.\.\.)")


def with_cli_flags(message: str) -> str:
    """``message`` of an error raised by ``load_task`` with its keyword arguments named as this CLI's flags:
    ``label_column='<column>' to load_task`` -> ``--label-column <column>``, ``kind='regression'`` ->
    ``--kind regression``."""
    message = _COLUMN_KEYWORD.sub(lambda m: f"--{m.group(1).replace('_', '-')} <column>", message)
    return _KIND_KEYWORD.sub(lambda m: f"--kind {m.group(1) or '...'}", message)


def set_threads(args: argparse.Namespace) -> None:
    """Apply --threads, and keep transformers' weight-loading bars off the terminal (ours are enough)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def train_config(args: argparse.Namespace, method: str, output_dir: str, lr: float | None) -> Any:
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
        train_on_prompt=getattr(args, "train_on_prompt", False),
        last_turn_only=getattr(args, "last_turn_only", False),
        max_new_tokens=getattr(args, "max_new_tokens", None),
        packing=getattr(args, "packing", None),
        gradient_checkpointing=getattr(args, "gradient_checkpointing", None),
        loss_chunk_size=getattr(args, "loss_chunk_size", 512),
        init_batches=getattr(args, "init_batches", 16),
    )


def evaluation_loader(args: argparse.Namespace, task: Any, tokenizer: Any, info: dict[str, Any]) -> Any:
    from adapterhub.data import encode
    from adapterhub.training.evaluation import make_loader

    examples = task.dev if args.split == "dev" else task.train
    if not examples:
        raise ConfigError(f"{args.data} has no {args.split} examples to evaluate on.")
    if task.media is not None:
        from adapterhub.training.media_batches import media_loader

        return media_loader(examples, task, tokenizer, args.batch_size)
    max_length = args.max_length or info.get("max_length") or 128
    data = encode(examples, tokenizer, kind=task.kind, max_length=max_length, num_labels=task.num_labels)
    return make_loader(data, tokenizer, args.batch_size, shuffle=False, seed=0)


def check_task_fits(task: Any, info: dict[str, Any]) -> None:
    kind = info.get("kind")
    if kind and kind != task.kind:
        raise ConfigError(f"the run was trained on a {kind} task, but {task.name!r} is a {task.kind} task.")
    labels = info.get("labels")
    if labels and task.kind != "multiple_choice" and list(task.labels) != list(labels):
        raise ConfigError(
            f"the run's labels {labels} differ from the data's labels {list(task.labels)}; pass the same label set."
        )


def format_bytes(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.1f} MB"


def summary_line(data: dict[str, Any]) -> str:
    metric = data["metric"]
    value = metric["value"]
    shown = "n/a" if value is None else f"{value:.4f}"
    speed = data["train_examples_per_second"]
    return (
        f"{data['method']}: dev {metric['name']} {shown} | trainable {data['trainable_parameters']:,} "
        f"({data['percent_of_base']:.2f}% of base) | {speed or 0:.1f} train examples/s | "
        f"peak memory {format_bytes(data['peak_memory_bytes'])} | saved {format_bytes(data['saved_size_bytes'])}"
    )

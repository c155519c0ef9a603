"""Seeded batches of real training rows for the benchmarks (one definition for every bench script).

``sample_batches(tokenizer, task_name, n_batches, batch_size, max_length, seed, padding)``: ``n_batches`` batches
of rows drawn with ``random.Random(seed)`` from the task's training split, tokenized with truncation to
``max_length`` and ``padding`` (``"max_length"`` for fixed shapes, ``True`` for per-batch padding), with
``labels`` when ``labels=True``.
"""

from __future__ import annotations

import random
from typing import Any

import torch

KEYS = ("input_ids", "attention_mask", "token_type_ids")


def sample_batches(
    tokenizer: Any,
    task_name: str,
    n_batches: int,
    batch_size: int,
    max_length: int,
    seed: int,
    *,
    padding: bool | str = "max_length",
    labels: bool = False,
) -> list[dict[str, torch.Tensor]]:
    from adapterhub.data import load_task

    task = load_task(task_name)
    rows = random.Random(seed).sample(list(task.train), n_batches * batch_size)
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        encoded = tokenizer(
            [row.text for row in chunk],
            truncation=True,
            max_length=max_length,
            padding=padding,
            return_tensors="pt",
        )
        batch = {key: encoded[key] for key in KEYS if key in encoded}
        if labels:
            batch["labels"] = torch.tensor([int(row.label) for row in chunk])
        batches.append(batch)
    return batches

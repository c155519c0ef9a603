"""Helpers shared by the benchmark scripts: seeded batches of real rows, and worker processes in other venvs.

``sample_batches(tokenizer, task_name, n_batches, batch_size, max_length, seed, padding)``: ``n_batches`` batches
of rows drawn with ``random.Random(seed)`` from the task's training split, tokenized with truncation to
``max_length`` and ``padding`` (``"max_length"`` for fixed shapes, ``True`` for per-batch padding), with
``labels`` when ``labels=True``.

``JsonWorker(command, lib, threads)``: a benchmark worker process (often in another venv, e.g. the `adapters`
library's) that reads one JSON request per line on stdin and answers one JSON line on stdout (other stdout lines
and all stderr pass through); its first line is a greeting. Only one worker computes at a time: the driver asks
them in turn.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
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


class JsonWorker:
    """A worker process speaking JSON lines; ``hello`` is its greeting."""

    def __init__(self, command: list[str], lib: str, threads: int) -> None:
        environment = {"OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        self.lib = lib
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **environment},
        )
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)  # type: ignore[no-any-return]
        raise RuntimeError(f"the {self.lib} worker exited with {self.process.wait()} (see its stderr above)")

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin is not None and self.process.poll() is None:
            self.process.stdin.write(json.dumps({"quit": True}) + "\n")
            self.process.stdin.close()
        self.process.wait(timeout=60)

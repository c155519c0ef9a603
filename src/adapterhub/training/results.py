"""The results file of a training run (``results.json``), rewritten after every evaluation so that a crash or
kill loses nothing already measured.

Schema ``adapterhub.train-results/1`` (every key always present; ``null`` where not measured yet):

``status`` ("running", "completed", "failed"), ``error``, ``task`` {name, kind, labels, train_examples,
dev_examples}, ``model``, ``method``, ``metric`` {name, value, greater_is_better} (best dev value), ``dev_metrics``
(all metrics at the best evaluation), ``best_step``, ``history`` [{step, epoch, time (Unix time at the end of the
evaluation), train_loss, learning_rate, <metrics>}], ``trainable_parameters``, ``base_parameters``, ``percent_of_base``, ``train_examples_per_second``,
``train_seconds``, ``wall_seconds``, ``steps``, ``epochs``, ``stopped_early``, ``peak_memory_bytes``,
``peak_memory_kind`` ("rss", "rss_since_process_start" or "cuda_max_allocated"), ``saved_size_bytes``,
``saved_dir``, ``config`` (the TrainConfig), ``environment`` {torch, transformers, adapterhub, device,
world_size, threads, precision}, ``train_tokens_per_second`` (every non-padding token) and
``train_loss_tokens_per_second`` (the tokens that carry loss; generation tasks only), ``generation`` (generation
tasks, else ``null``): {``accuracy_before`` (the base model without adapter, same rows, same decoding),
``accuracy`` (the kept weights), ``allowed_fraction`` / ``allowed_fraction_before``, ``answer_counts`` /
``answer_counts_before`` (generated answers per allowed answer, plus ``other``), ``majority_rate`` (of the gold
answers), ``loss`` / ``loss_before`` (per response token), ``dev_rows``, ``samples`` [{prompt, generated, gold}],
``truncated`` {train, dev}}, ``speech`` (ctc tasks, else ``null``): {``vocabulary`` {source ("model": the
model folder's tokenizer, "built": from the training transcripts), from, path, size, blank, word_delimiter},
``samples`` [{audio, reference, prediction}] (the first dev rows at the best evaluation)}.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "adapterhub.train-results/1"
RESULTS_FILE = "results.json"
REQUIRED_KEYS = (
    "schema",
    "status",
    "error",
    "task",
    "model",
    "method",
    "metric",
    "dev_metrics",
    "best_step",
    "history",
    "trainable_parameters",
    "base_parameters",
    "percent_of_base",
    "train_examples_per_second",
    "train_seconds",
    "wall_seconds",
    "steps",
    "epochs",
    "stopped_early",
    "peak_memory_bytes",
    "peak_memory_kind",
    "saved_size_bytes",
    "saved_dir",
    "config",
    "environment",
    "train_tokens_per_second",
    "train_loss_tokens_per_second",
    "generation",
    "speech",
)


@dataclass
class TrainResults:
    """What :func:`adapterhub.training.train` returns; ``to_dict()`` is the results file's content."""

    task: dict[str, Any]
    model: str
    method: str
    config: dict[str, Any]
    environment: dict[str, Any]
    metric_name: str
    greater_is_better: bool
    status: str = "running"
    error: str | None = None
    metric_value: float | None = None
    dev_metrics: dict[str, float] = field(default_factory=dict)
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    trainable_parameters: int = 0
    base_parameters: int = 0
    train_examples_per_second: float | None = None
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    steps: int = 0
    epochs: float = 0.0
    stopped_early: bool = False
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    saved_size_bytes: int | None = None
    saved_dir: str | None = None
    train_tokens_per_second: float | None = None
    train_loss_tokens_per_second: float | None = None
    generation: dict[str, Any] | None = None
    speech: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def percent_of_base(self) -> float | None:
        if not self.base_parameters:
            return None
        return 100.0 * self.trainable_parameters / self.base_parameters

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "status": self.status,
            "error": self.error,
            "task": self.task,
            "model": self.model,
            "method": self.method,
            "metric": {
                "name": self.metric_name,
                "value": _clean(self.metric_value),
                "greater_is_better": self.greater_is_better,
            },
            "dev_metrics": {k: _clean(v) for k, v in self.dev_metrics.items()},
            "best_step": self.best_step,
            "history": [{k: _clean(v) for k, v in row.items()} for row in self.history],
            "trainable_parameters": self.trainable_parameters,
            "base_parameters": self.base_parameters,
            "percent_of_base": _clean(self.percent_of_base),
            "train_examples_per_second": _clean(self.train_examples_per_second),
            "train_seconds": round(self.train_seconds, 3),
            "wall_seconds": round(self.wall_seconds, 3),
            "steps": self.steps,
            "epochs": round(self.epochs, 4),
            "stopped_early": self.stopped_early,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_kind": self.peak_memory_kind,
            "saved_size_bytes": self.saved_size_bytes,
            "saved_dir": self.saved_dir,
            "config": self.config,
            "environment": self.environment,
            "train_tokens_per_second": _clean(self.train_tokens_per_second),
            "train_loss_tokens_per_second": _clean(self.train_loss_tokens_per_second),
            "generation": None
            if self.generation is None
            else {k: _clean(v) for k, v in self.generation.items()},
            "speech": self.speech,
        }

    def write(self, path: Path) -> Path:
        """Write the results file atomically (a temporary file renamed over the old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(path.name + ".tmp")
        staging.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(staging, path)
        self.path = path
        return path


def _clean(value: Any) -> Any:
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def check_results(data: dict[str, Any]) -> list[str]:
    """Problems with a results dict against the schema (empty when it is valid)."""
    problems = [f"missing key {key!r}" for key in REQUIRED_KEYS if key not in data]
    if data.get("schema") != SCHEMA:
        problems.append(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
    if data.get("status") not in ("running", "completed", "failed"):
        problems.append(f"bad status {data.get('status')!r}")
    metric = data.get("metric")
    if not isinstance(metric, dict) or not {"name", "value", "greater_is_better"} <= set(metric):
        problems.append("metric must be {name, value, greater_is_better}")
    for key in ("trainable_parameters", "base_parameters", "steps"):
        if key in data and not isinstance(data[key], int):
            problems.append(f"{key} must be an integer")
    return problems

"""Inference overhead of a trained run against the bare pretrained model (the ``inference vs bare`` column of
``adapterhub compare``).

The trained model (base + adapter + head as ``adapterhub train`` saved it; adapters unmerged, as they are used
for training and composition) and the bare model (the same checkpoint loaded with ``transformers.AutoModel``,
no ``adapterhub.init``, no head) run the same dev batches under ``torch.no_grad`` in eval mode. Timing is in
interleaved rounds: round 0 warms both up and is dropped, the order of the two is reversed every other round,
and the figure is the median over rounds of ``seconds(trained) / seconds(bare)`` — both sides of each ratio were
timed within the same round, so a slow patch of the machine hits both. The bare side has no head; the heads here
(a small MLP over one pooled vector) cost well under 1% of an encoder forward.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapterhub.data import encode
from adapterhub.data.task import TaskData
from adapterhub.errors import ConfigError
from adapterhub.training.evaluation import make_loader
from adapterhub.training.modeling import forward_batch, load_base, load_trained


def _bare_inputs(batch: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """The model inputs of a collated batch, without labels; multiple-choice (batch, choices, seq) inputs are
    flattened to (batch * choices, seq) as every multiple-choice head does before the encoder."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "choice_mask")}
    if kind == "multiple_choice":
        inputs = {k: v.reshape(-1, v.shape[-1]) for k, v in inputs.items()}
    return inputs


@torch.no_grad()
def inference_overhead(
    model: nn.Module, bare: nn.Module, batches: list[dict[str, torch.Tensor]], kind: str, rounds: int = 7
) -> dict[str, Any]:
    """Time ``model`` (through :func:`forward_batch`) and ``bare`` (plain forward) over ``batches``.

    Returns ``{"ratio": median of per-round seconds(model) / seconds(bare), "rounds": timed rounds,
    "model_seconds": median seconds per pass over the batches, "bare_seconds": the same for bare}``.
    """
    if rounds < 2:
        raise ConfigError(f"rounds must be at least 2 (round 0 is a warm-up); got {rounds}.")
    if not batches:
        raise ConfigError("inference overhead needs at least one dev batch; the task has no dev examples.")
    model.eval()
    bare.eval()

    def run_model() -> float:
        tick = time.perf_counter()
        for batch in batches:
            forward_batch(model, {k: v for k, v in batch.items() if k != "labels"}, kind)
        return time.perf_counter() - tick

    def run_bare() -> float:
        tick = time.perf_counter()
        for batch in batches:
            bare(**_bare_inputs(batch, kind))
        return time.perf_counter() - tick

    ratios: list[float] = []
    model_times: list[float] = []
    bare_times: list[float] = []
    for index in range(rounds):
        if index % 2:
            bare_time, model_time = run_bare(), run_model()
        else:
            model_time, bare_time = run_model(), run_bare()
        if index == 0:
            continue
        ratios.append(model_time / bare_time)
        model_times.append(model_time)
        bare_times.append(bare_time)
    return {
        "ratio": statistics.median(ratios),
        "rounds": len(ratios),
        "model_seconds": statistics.median(model_times),
        "bare_seconds": statistics.median(bare_times),
    }


def run_overhead(
    saved_dir: str | Path,
    model_path: str | None,
    task: TaskData,
    *,
    max_length: int,
    batch_size: int,
    examples: int = 256,
    rounds: int = 7,
    quantize: str | None = None,
) -> dict[str, Any]:
    """:func:`inference_overhead` of the run saved in ``saved_dir`` against the bare ``model_path`` checkpoint,
    on the first ``examples`` dev examples of ``task`` in batches of ``batch_size`` (padded per batch)."""
    if not task.dev:
        raise ConfigError(f"task {task.name!r} has no dev examples to time inference on.")
    model, tokenizer, _ = load_trained(Path(saved_dir), model_path, quantize)
    bare, _, _ = load_base(model_path, quantize=quantize)  # the same base, quantised alike
    data = encode(
        task.dev[:examples], tokenizer, kind=task.kind, max_length=max_length, num_labels=task.num_labels
    )
    batches = list(make_loader(data, tokenizer, batch_size, shuffle=False, seed=0))
    result = inference_overhead(model, bare, batches, task.kind, rounds=rounds)
    result["examples"] = len(data)
    return result

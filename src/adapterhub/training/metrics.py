"""Evaluation metrics on collected logits and labels.

Classification and multiple choice: ``accuracy`` and ``macro_f1`` (the unweighted mean of per-class F1; a class
that is neither predicted nor present counts as F1 = 0 only if it is present, otherwise it is left out).
Regression: ``mse`` and ``pearson``. Multi-label: ``micro_f1``, ``macro_f1`` and exact-match ``accuracy``.
Generation tasks are scored on generated answers, not logits (:mod:`adapterhub.training.generate_eval`):
``accuracy`` (normalised exact match), ``allowed_fraction`` and the per-token dev ``loss``. Speech recognition
(``ctc``) on greedy transcripts: ``wer``, ``cer`` (:mod:`adapterhub.training.ctc_metrics`) and the dev CTC ``loss``.
"""

from __future__ import annotations

import math

import torch

from adapterhub.errors import ConfigError, did_you_mean

MAIN_METRIC = {
    "classification": "accuracy",
    "multiple_choice": "accuracy",
    "regression": "pearson",
    "multilabel": "micro_f1",
    "generation": "accuracy",
    "ctc": "wer",
}
GREATER_IS_BETTER = {
    "accuracy": True,
    "macro_f1": True,
    "micro_f1": True,
    "pearson": True,
    "mse": False,
    "allowed_fraction": True,
    "loss": False,
    "wer": False,
    "cer": False,
}
METRICS_BY_KIND = {
    "classification": ("accuracy", "macro_f1"),
    "multiple_choice": ("accuracy", "macro_f1"),
    "regression": ("mse", "pearson"),
    "multilabel": ("micro_f1", "macro_f1", "accuracy"),
    "generation": ("accuracy", "allowed_fraction", "loss"),
    "ctc": ("wer", "cer", "loss"),
}


def check_metric(kind: str, metric: str | None) -> str:
    """The metric to select on: ``metric`` if it fits ``kind``, else the kind's main metric when ``None``."""
    if kind not in MAIN_METRIC:
        raise ConfigError(f"no metrics for task kind {kind!r}; kinds: {', '.join(MAIN_METRIC)}.")
    if metric is None:
        return MAIN_METRIC[kind]
    valid = METRICS_BY_KIND[kind]
    if metric not in valid:
        raise ConfigError(
            f"metric {metric!r} is not available for a {kind} task{did_you_mean(metric, valid)}; "
            f"use one of {', '.join(valid)}."
        )
    return metric


def is_better(metric: str, new: float, old: float | None) -> bool:
    if old is None or math.isnan(old):
        return not math.isnan(new)
    return new > old if GREATER_IS_BETTER[metric] else new < old


def compute_metrics(kind: str, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``logits``: (n, classes) or (n, 1)/(n,) for regression; ``labels``: (n,) indices or values, or (n, classes)
    multi-hot for multi-label."""
    if kind == "generation":
        raise ConfigError(
            "a generation task is scored on generated answers, not on logits and labels; use "
            "adapterhub.training.generate_eval.evaluate_generation."
        )
    if kind not in METRICS_BY_KIND:
        raise ConfigError(f"no metrics for task kind {kind!r}; kinds: {', '.join(METRICS_BY_KIND)}.")
    logits = logits.detach().float().cpu()
    labels = labels.detach().cpu()
    if logits.shape[0] == 0:
        return {name: float("nan") for name in METRICS_BY_KIND[kind]}
    if kind == "regression":
        predictions = logits.view(-1)
        targets = labels.float().view(-1)
        return {"mse": float(((predictions - targets) ** 2).mean()), "pearson": pearson(predictions, targets)}
    if kind == "multilabel":
        predicted = (logits > 0).long()
        targets = labels.round().long()
        tp = (predicted & targets).sum(dim=0).double()
        fp = (predicted & (1 - targets)).sum(dim=0).double()
        fn = ((1 - predicted) & targets).sum(dim=0).double()
        micro = _f1(float(tp.sum()), float(fp.sum()), float(fn.sum()))
        present = (tp + fp + fn) > 0
        per_class = [_f1(float(a), float(b), float(c)) for a, b, c in zip(tp, fp, fn)]
        chosen = [f for f, keep in zip(per_class, present.tolist()) if keep]
        return {
            "micro_f1": micro,
            "macro_f1": sum(chosen) / len(chosen) if chosen else 0.0,
            "accuracy": float((predicted == targets).all(dim=1).double().mean()),
        }
    predicted = logits.argmax(dim=-1)
    targets = labels.long().view(-1)
    return {
        "accuracy": float((predicted == targets).double().mean()),
        "macro_f1": macro_f1(predicted, targets),
    }


def _f1(tp: float, fp: float, fn: float) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def macro_f1(predicted: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean F1 over the classes that occur in ``predicted`` or ``targets``."""
    classes = torch.unique(torch.cat([predicted, targets]))
    scores = []
    for c in classes.tolist():
        tp = float(((predicted == c) & (targets == c)).sum())
        fp = float(((predicted == c) & (targets != c)).sum())
        fn = float(((predicted != c) & (targets == c)).sum())
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores) if scores else 0.0


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation; NaN when either side is constant."""
    x = x.double() - x.double().mean()
    y = y.double() - y.double().mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum()) / denominator if denominator else float("nan")

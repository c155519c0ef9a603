"""Head outputs -> JSON predictions, one per input, by head type.

- classification: ``{"label": L, "scores": {label: softmax probability}}``;
- multi-label (``multilabel`` heads): ``{"labels": [labels with sigmoid > 0.5], "scores": {label: sigmoid}}``;
- regression (one output): ``{"value": x}``;
- tagging: ``{"tokens": [{"token", "label", "score", "start", "end"}, ...]}`` for the input's tokens (special
  tokens left out; ``start``/``end`` are character offsets when the tokenizer gives them);
- multiple choice: ``{"choice": i, "scores": [softmax over the choices]}``;
- extractive QA: ``{"answer": text, "start": char, "end": char, "score": p_start · p_end}``, the best span of at
  most ``MAX_ANSWER_TOKENS`` tokens inside the context.

With ``logits=True`` each prediction also carries the raw ``logits`` (lists of floats).
"""

from __future__ import annotations

from typing import Any

import torch

from adapterhub.errors import ConfigError
from adapterhub.serving.encoding import Encoded

MAX_ANSWER_TOKENS = 30
PREDICT_HEADS = (
    "classification",
    "regression",
    "multilabel",
    "tagging",
    "multiple_choice",
    "question_answering",
)


def check_predicts(head: Any, what: str) -> None:
    """Raise ``ConfigError`` (HTTP 422) when ``head`` cannot answer /v1/predict."""
    if head is None:
        raise ConfigError(f"{what} has no prediction head; use /v1/embed for its pooled vectors.")
    if head.head_type not in PREDICT_HEADS:
        hint = " Use /v1/generate or /v1/completions." if head.head_type == "causal_lm" else ""
        raise ConfigError(f"{what} has a {head.head_type} head, which /v1/predict does not serve.{hint}")


def label_names(head: Any, count: int) -> list[str]:
    id2label = getattr(head, "id2label", None) or {}
    return [id2label.get(i, f"LABEL_{i}") for i in range(count)]


def _floats(tensor: torch.Tensor) -> list[Any]:
    return tensor.double().tolist()  # type: ignore[no-any-return]


def sequence_predictions(head: Any, logits: torch.Tensor, with_logits: bool) -> list[dict[str, Any]]:
    """``logits`` (rows, num_labels) of a classification, regression or multi-label head."""
    out = []
    settings = getattr(head, "settings", {})
    names = label_names(head, logits.shape[-1])
    for row in logits.float():
        if head.head_type == "regression" or logits.shape[-1] == 1:
            item: dict[str, Any] = {"value": float(row[0])}
        elif head.head_type == "multilabel" or settings.get("multilabel"):
            probs = torch.sigmoid(row)
            item = {
                "labels": [n for n, p in zip(names, probs.tolist(), strict=True) if p > 0.5],
                "scores": dict(zip(names, _floats(probs), strict=True)),
            }
        else:
            probs = torch.softmax(row, dim=-1)
            item = {
                "label": names[int(probs.argmax())],
                "scores": dict(zip(names, _floats(probs), strict=True)),
            }
        if with_logits:
            item["logits"] = _floats(row)
        out.append(item)
    return out


def tagging_predictions(
    head: Any, logits: torch.Tensor, encoded: Encoded, with_logits: bool
) -> list[dict[str, Any]]:
    """``logits`` (rows, padded seq, num_labels); each row's real tokens only."""
    out = []
    names = label_names(head, logits.shape[-1])
    for r, ids in enumerate(encoded.input_ids):
        probs = torch.softmax(logits[r, : len(ids)].float(), dim=-1)  # (seq, num_labels)
        tokens = []
        for t in range(len(ids)):
            if encoded.sequence_ids and encoded.sequence_ids[r][t] is None:
                continue
            token: dict[str, Any] = {
                "token": encoded.tokens[r][t] if encoded.tokens else ids[t],
                "label": names[int(probs[t].argmax())],
                "score": float(probs[t].max()),
            }
            if encoded.offsets:
                token["start"], token["end"] = encoded.offsets[r][t]
            if with_logits:
                token["logits"] = _floats(logits[r, t])
            tokens.append(token)
        out.append({"tokens": tokens})
    return out


def choice_prediction(logits: torch.Tensor, with_logits: bool) -> dict[str, Any]:
    """``logits`` (n_choices,) of one example."""
    probs = torch.softmax(logits.float(), dim=-1)
    item: dict[str, Any] = {"choice": int(probs.argmax()), "scores": _floats(probs)}
    if with_logits:
        item["logits"] = _floats(logits)
    return item


def qa_predictions(
    start_logits: torch.Tensor, end_logits: torch.Tensor, encoded: Encoded, with_logits: bool
) -> list[dict[str, Any]]:
    """``start_logits`` / ``end_logits`` (rows, padded seq): the best span inside each row's context."""
    out = []
    for r, ids in enumerate(encoded.input_ids):
        n = len(ids)
        context = torch.tensor(
            [s == 1 for s in encoded.sequence_ids[r]] if encoded.sequence_ids else [True] * n,
            dtype=torch.bool,
        )
        p_start = torch.softmax(start_logits[r, :n].float(), dim=-1)
        p_end = torch.softmax(end_logits[r, :n].float(), dim=-1)
        scores = p_start[:, None] * p_end[None, :]  # (start, end)
        allowed = torch.triu(torch.ones(n, n, dtype=torch.bool)) & ~torch.triu(
            torch.ones(n, n, dtype=torch.bool), diagonal=MAX_ANSWER_TOKENS
        )
        allowed &= context[:, None] & context[None, :]
        if not bool(allowed.any()):
            item: dict[str, Any] = {"answer": "", "start": None, "end": None, "score": 0.0}
        else:
            best = int(torch.where(allowed, scores, torch.full_like(scores, -1.0)).flatten().argmax())
            s, e = divmod(best, n)
            item = {"score": float(scores[s, e]), "start_token": s, "end_token": e}
            if encoded.offsets:
                start, end = encoded.offsets[r][s][0], encoded.offsets[r][e][1]
                item.update(answer=encoded.texts[r][start:end], start=start, end=end)
            else:
                item["answer"] = None
        if with_logits:
            item["start_logits"], item["end_logits"] = (
                _floats(start_logits[r, :n]),
                _floats(end_logits[r, :n]),
            )
        out.append(item)
    return out


def predictions_for(head: Any, output: Any, encoded: Encoded, with_logits: bool) -> list[dict[str, Any]]:
    """The JSON predictions of one request from its head's ``HeadOutput`` (or, for multiple choice, a list of
    per-example logits)."""
    kind = head.head_type
    if kind == "multiple_choice":
        return [choice_prediction(logits, with_logits) for logits in output]
    if kind == "tagging":
        return tagging_predictions(head, output.logits, encoded, with_logits)
    if kind == "question_answering":
        return qa_predictions(output.extra["start_logits"], output.extra["end_logits"], encoded, with_logits)
    if kind in ("classification", "regression", "multilabel"):
        return sequence_predictions(head, output.logits, with_logits)
    raise ConfigError(f"/v1/predict does not serve {kind} heads.")

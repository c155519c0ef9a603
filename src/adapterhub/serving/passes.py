"""One forward pass for many requests: rows of different adapters and setups in one ``BatchSplit``.

``run_batch(model, works)`` (on the model thread):

1. groups the works by setup (a name, ``Stack("lang", "task")``, ``Fuse("a", "b")``, or None for the bare model);
2. pads every row to the longest row of the batch (right padding; ``input_ids``, ``attention_mask``,
   ``token_type_ids``) and orders the rows group by group;
3. runs the base model once under ``BatchSplit(setup_1, ..., setup_k, batch_sizes=[rows_1, ..., rows_k])`` as a
   per-call setup (``model.adapter_setup``; never ``set_active_adapters`` on the shared model). The interpreter
   runs alike adapters at a point as one grouped computation and the others row block by row block;
4. applies each work's head (kept by the registry, outside the model) to that work's rows of the last hidden
   states, or pools them for /v1/embed, and turns the result into JSON.

Rows are independent in every layer (attention is within a row, padding is masked), so a request's result equals
the result of running it alone, up to float rounding. Groups that cannot share one BatchSplit (a setup the
interpreter refuses inside it, or no adapter) run as passes of their own; an error in one group's pass or head
fails that group's works only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.heads.base import pool
from adapterhub.runtime.head_inputs import HeadInputs
from adapterhub.runtime.layers import get_base_model
from adapterhub.serving.encoding import Encoded
from adapterhub.serving.predictions import predictions_for
from adapterhub.spec.composition import BatchSplit, Setup


@dataclass
class Work:
    """One request's part of a batch. ``task``: ``predict`` or ``embed``; ``setup``: normalised setup or None;
    ``head``: the head of the setup's last adapter (predict); ``pooling``: ``mean``, ``first`` or ``last``
    (embed); ``with_logits``: add raw logits to predictions."""

    task: str
    setup: Setup | None
    encoded: Encoded
    head: Any = None
    pooling: str = "mean"
    with_logits: bool = False


@dataclass
class Padded:
    """``input_ids``, ``attention_mask`` (rows, T) and optional ``token_type_ids`` of a batch."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None

    def kwargs(self) -> dict[str, torch.Tensor]:
        out = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            out["token_type_ids"] = self.token_type_ids
        return out


def pad(encodings: Sequence[Encoded], pad_id: int, device: torch.device) -> Padded:
    """Right-pad every row of ``encodings`` to the longest one."""
    rows = [row for e in encodings for row in e.input_ids]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    with_types = all(e.token_type_ids is not None for e in encodings)
    types = torch.zeros((len(rows), width), dtype=torch.long) if with_types else None
    types_rows = [row for e in encodings for row in (e.token_type_ids or [])] if with_types else []
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        if types is not None:
            types[i, : len(row)] = torch.tensor(types_rows[i], dtype=torch.long)
    return Padded(ids.to(device), mask.to(device), None if types is None else types.to(device))


def _groups(works: Sequence[Work]) -> list[tuple[Setup | None, list[int]]]:
    """Indices of ``works`` grouped by setup, in order of first appearance."""
    groups: dict[Any, list[int]] = {}
    for i, work in enumerate(works):
        groups.setdefault(work.setup, []).append(i)
    return list(groups.items())


def _combined(setups: Sequence[Setup], sizes: Sequence[int]) -> Setup:
    return setups[0] if len(setups) == 1 else BatchSplit(*setups, batch_sizes=list(sizes))


def run_batch(model: Any, works: Sequence[Work], pad_id: int) -> list[list[Any] | BaseException]:
    """Predictions (a list of JSON values) or the exception, per work. Runs on the model thread."""
    results: list[list[Any] | BaseException | None] = [None] * len(works)
    groups = _groups(works)
    adapter_groups = [g for g in groups if g[0] is not None]
    plain = [g for g in groups if g[0] is None]
    passes = [adapter_groups] if adapter_groups else []
    passes += [[g] for g in plain]
    while passes:
        part = passes.pop(0)
        try:
            _run_pass(model, works, part, pad_id, results)
        except Exception as error:
            if len(part) > 1:  # one group's setup or rows may be at fault: run the groups apart
                passes = [[g] for g in part] + passes
                continue
            for i in part[0][1]:
                results[i] = error
    return [r if r is not None else RuntimeError("no result") for r in results]


@torch.no_grad()
def _run_pass(
    model: Any,
    works: Sequence[Work],
    groups: Sequence[tuple[Setup | None, list[int]]],
    pad_id: int,
    results: list[list[Any] | BaseException | None],
) -> None:
    order = [i for _, indices in groups for i in indices]
    encodings = [works[i].encoded for i in order]
    device = next(model.parameters()).device
    padded = pad(encodings, pad_id, device)
    sizes = [sum(works[i].encoded.rows for i in indices) for _, indices in groups]
    setups = [setup for setup, _ in groups]
    base = get_base_model(model)
    if setups[0] is None:
        output = base(**padded.kwargs())
    else:
        with model.adapter_setup(_combined(setups, sizes)):  # type: ignore[arg-type]
            output = base(**padded.kwargs())
    hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state  # (rows, T', d)
    pooled = None if isinstance(output, tuple) else getattr(output, "pooler_output", None)
    width = padded.input_ids.shape[1]
    if hidden.shape[1] > width:  # positions an adapter put before the tokens (prompt tuning)
        hidden, pooled = hidden[:, hidden.shape[1] - width :], None
    start = 0
    for i in order:
        work = works[i]
        rows = slice(start, start + work.encoded.rows)
        start = rows.stop
        try:
            results[i] = _finish(
                model, work, hidden[rows], padded, rows, None if pooled is None else pooled[rows]
            )
        except Exception as error:  # this request's head failed; the others keep their results
            results[i] = error


def _finish(
    model: Any, work: Work, hidden: torch.Tensor, padded: Padded, rows: slice, pooled: Any
) -> list[Any]:
    mask, ids = padded.attention_mask[rows], padded.input_ids[rows]
    if work.task == "embed":
        vectors = pool(
            HeadInputs(hidden=hidden, attention_mask=mask, input_ids=ids), work.pooling
        )  # (rows, d)
        return [{"embedding": v.double().tolist()} for v in vectors.float()]
    head = work.head
    embeddings = None
    if getattr(head, "needs_embeddings", False):
        from adapterhub.runtime.head_inputs import output_embedding_matrix

        embeddings = output_embedding_matrix(model)
    if work.encoded.choices is not None:  # multiple choice: one head call per example over its choice rows
        per_example, first = [], 0
        for n in work.encoded.choices:
            part = slice(first, first + n)
            first += n
            inputs = HeadInputs(
                hidden=hidden[part],
                attention_mask=mask[part],
                input_ids=ids[part],
                pooled=None if pooled is None else pooled[part],
                num_choices=n,
            )
            per_example.append(head(inputs).logits[0])  # (n,)
        return predictions_for(head, per_example, work.encoded, work.with_logits)
    inputs = HeadInputs(
        hidden=hidden, attention_mask=mask, input_ids=ids, pooled=pooled, embeddings=embeddings
    )
    return predictions_for(head, head(inputs), work.encoded, work.with_logits)

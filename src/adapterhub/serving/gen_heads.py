"""Rows of a generation step that bring their own causal-LM head (an adapter saved with one): their logits come from
that head applied to the base model's last hidden state, captured by a forward hook during the step's one forward;
every other row keeps the model's LM head. A tied head without extra layers computes what the model's LM head
does; a head with its own weights (untied, a transform, a bias) changes that adapter's rows only."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from adapterhub.errors import ConfigError
from adapterhub.runtime.head_inputs import HeadInputs, output_embedding_matrix
from adapterhub.runtime.layers import get_base_model
from adapterhub.serving.gen_scheduler import SequenceState


@contextmanager
def last_hidden(model: Any, rows: Sequence[SequenceState]) -> Iterator[list[torch.Tensor]]:
    """While some row has its own head: capture the base model's last hidden state ``(B, T, d)`` of the forward
    (a forward hook on the transformer body, removed after the step)."""
    captured: list[torch.Tensor] = []
    if not any(seq.head is not None for seq in rows):
        yield captured
        return

    def keep(module: Any, args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

    hook = get_base_model(model).register_forward_hook(keep)
    try:
        yield captured
    finally:
        hook.remove()


def with_heads(
    model: Any,
    rows: Sequence[SequenceState],
    logits: torch.Tensor,
    hidden: list[torch.Tensor],
    packed_last: torch.Tensor | None = None,
) -> torch.Tensor:
    """``logits`` ``(B, V)`` of the model's LM head, with the rows that bring a head replaced by that head's logits
    of their last hidden state (rows of one head run together). ``packed_last``: in a packed step (one row), each
    sequence's last token index ``(B,)``; else each row's last position."""
    if not hidden:
        return logits
    if packed_last is None:
        last = hidden[-1][:, -1:]  # (B, 1, d)
    else:
        last = hidden[-1][0, packed_last].unsqueeze(1)  # (B, 1, d)
    by_head: dict[int, list[int]] = {}
    for i, seq in enumerate(rows):
        if seq.head is not None:
            by_head.setdefault(id(seq.head), []).append(i)
    embeddings = output_embedding_matrix(model)
    logits = logits.clone()
    for indices in by_head.values():
        head = rows[indices[0]].head
        index = torch.tensor(indices, device=last.device)
        out = head(HeadInputs(hidden=last[index], attention_mask=None, input_ids=None, embeddings=embeddings))
        logits[index] = out.logits[:, -1].to(logits.dtype)  # (rows of this head, V)
    return logits


def check_head(head: Any) -> None:
    if head is not None and getattr(head, "head_type", None) != "causal_lm":
        kind = getattr(head, "head_type", type(head).__name__)
        raise ConfigError(
            f"A sequence's head must be a causal_lm head (model.add_causal_lm_head), got a {kind} head; leave "
            "head=None to use the model's LM head."
        )

"""The response-token loss of generation training, with the LM head run in chunks.

The loss is the next-token cross-entropy over the tokens that carry loss (labels other than -100), position ``t``
predicting ``labels[t + 1]``::

    loss = (1 / N) * sum_{(b, t) : labels[b, t + 1] != -100}  -log softmax(head(h[b, t]))[labels[b, t + 1]]

with ``h`` the last hidden states (after the final norm), ``head`` the model's output layer (with whatever
adapters act on it or on its input) and ``N`` the number of loss-carrying tokens.

:func:`generation_loss` computes it without ever holding the (batch, seq, vocab) logits: the model's forward pass
returns its hidden states and the logits of its last position only (``logits_to_keep=1``); the loss-carrying
positions are gathered, (N, d), and the head and the cross-entropy run on ``chunk_size`` of them at a time, each
chunk under non-reentrant activation checkpointing, so only one chunk's (chunk, vocab) logits exist at a time in
the forward pass and in the backward pass (where they are recomputed). Prompt positions never reach the head.
The value and the gradients are those of :func:`adapterhub.training.modeling.causal_lm_loss` over the full
logits (up to float summation order).

The chunked path needs the model's logits to be its output layer applied to its last hidden state (transformers'
language models return that state as ``hidden_states[-1]``). Each call checks it on the last position it was
given anyway (bit-equal); a model that scales or soft-caps its logits (Gemma 2, Cohere, Granite) fails the check with a
:class:`ConfigError` naming ``loss_chunk_size=0`` (``--loss-chunk-size 0``: the full logits).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from adapterhub.data.chat import IGNORE_INDEX
from adapterhub.errors import ConfigError
from adapterhub.training.modeling import causal_lm_loss, causal_logits


class ChunkedLossUnsupported(ConfigError):
    """The model's logits are not its output layer over its last hidden state: only the full logits apply."""


DEFAULT_CHUNK = 512  # positions per LM-head chunk: 512 x 49,152 (SmolLM2) float32 logits = 96 MiB


def generation_loss(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    chunk_size: int = DEFAULT_CHUNK,
    reduction: str = "mean",
) -> torch.Tensor:
    """The response-token loss of one collated generation batch (``input_ids``, ``labels``, and
    ``attention_mask`` or packed ``position_ids``), ``mean`` over the loss-carrying tokens or ``sum``;
    ``chunk_size`` 0 computes the full logits (:func:`adapterhub.training.modeling.causal_logits`), otherwise see
    the module docstring. ``model`` may be wrapped in DistributedDataParallel."""
    if reduction not in ("mean", "sum"):
        raise ConfigError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 0:
        raise ConfigError(
            f"loss_chunk_size must be 0 (full logits) or a positive integer, got {chunk_size!r}."
        )
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    labels = batch["labels"]  # (batch, seq)
    if chunk_size == 0:
        return causal_lm_loss(causal_logits(model, inputs), labels, reduction=reduction)
    hidden, head = _last_hidden(model, inputs)  # (batch, seq, d)
    targets = labels[:, 1:]  # (batch, seq - 1)
    carried = targets != IGNORE_INDEX  # (batch, seq - 1)
    states = hidden[:, :-1][carried]  # (N, d)
    wanted = targets[carried]  # (N,)
    total = states.new_zeros((), dtype=torch.float32)
    for start in range(0, wanted.shape[0], chunk_size):
        part, goal = states[start : start + chunk_size], wanted[start : start + chunk_size]
        if torch.is_grad_enabled() and (part.requires_grad or _trains(head)):
            total = total + checkpoint(_chunk_loss, head, part, goal, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, part, goal)
    if reduction == "sum":
        return total
    return total / wanted.shape[0] if wanted.shape[0] else total * float("nan")


def _chunk_loss(head: nn.Module, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of one chunk: ``states`` (n, d) through ``head`` to (1, n, vocab) logits."""
    logits = head(states.unsqueeze(0)).float()  # (1, n, vocab): the head sees (batch, seq, d) as in the model
    return nn.functional.cross_entropy(logits[0], targets, reduction="sum")


def _trains(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _last_hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, nn.Module]:
    """``(hidden, head)``: the last hidden states of the ``seq`` input positions, (batch, seq, d), and the
    model's output layer. Prompt tuning's soft tokens (in front) are cut off as in ``causal_logits``."""
    inner: Any = getattr(model, "module", model)  # a DistributedDataParallel wrapper holds the model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if not isinstance(head, nn.Module):
        raise ConfigError(
            f"{type(inner).__name__} has no output layer (get_output_embeddings()); the chunked loss needs a "
            "causal LM. Load it with AutoModelForCausalLM."
        )
    extra: dict[str, Any] = {"output_hidden_states": True, "logits_to_keep": 1}
    if "position_ids" in inputs and "attention_mask" not in inputs:
        extra["use_cache"] = False  # packed rows: see causal_logits
    output = model(**inputs, **extra)
    states = getattr(output, "hidden_states", None)
    if not states:
        raise ChunkedLossUnsupported(
            f"{type(inner).__name__} returned no hidden states; train it with loss_chunk_size=0 "
            "(--loss-chunk-size 0: the full logits)."
        )
    last = states[-1]  # (batch, [prompt +] seq, d)
    with torch.no_grad():
        expected = output.logits[:, -1:].float()  # (batch, 1, vocab)
        got = head(last[:, -1:]).float()  # (batch, 1, vocab)
        if not torch.equal(expected, got):  # the same module on the same state: bit-equal
            raise ChunkedLossUnsupported(
                f"{type(inner).__name__}'s logits are not its output layer over its last hidden state (it "
                "scales or soft-caps them), so the chunked loss cannot reproduce them; train it with "
                "loss_chunk_size=0 (--loss-chunk-size 0: the full logits)."
            )
    return last[:, -inputs["input_ids"].shape[1] :], head


def resolve_loss_chunk(model: nn.Module, chunk_size: int, token_id: int = 0) -> tuple[int, str | None]:
    """``(chunk_size to use, a line to print or None)``: ``chunk_size`` where the chunked loss reproduces the
    model's logits (checked on a two-token input of ``token_id``, without gradients), else 0 (the full logits)
    and the reason."""
    if chunk_size == 0:
        return 0, None
    device = next(model.parameters()).device
    ids = torch.full((1, 2), int(token_id), dtype=torch.long, device=device)  # (1, 2)
    probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            generation_loss(model, probe, chunk_size=chunk_size)
    except ChunkedLossUnsupported as error:
        return 0, f"loss over the full logits (--loss-chunk-size 0): {error}".split("; train it")[0]
    finally:
        model.train(was_training)
    return chunk_size, None

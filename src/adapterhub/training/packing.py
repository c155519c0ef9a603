"""Packing for the ``generation`` kind: the examples of a training batch share rows of up to ``max_length``
tokens instead of each being padded to the batch's longest.

* :func:`pack_lengths` places examples into rows, best-fit decreasing (deterministic: ties go to the earlier
  example and the earlier row); an example is never split and a row never exceeds ``max_length``.
* :func:`collate_packed` builds the batch: ``input_ids``, ``position_ids`` restarting at 0 at each example and
  ``labels`` whose first token of each example is -100 (the last token of one example never predicts the
  first token of the next). There is no ``attention_mask``: transformers' ``create_causal_mask`` reads the
  restarting position ids as packed sequences and builds a block-diagonal causal mask (sdpa, eager, flex), and
  flash attention takes its varlen path, but only without a key/value cache (the forward pass runs with
  ``use_cache=False``; with a cache the mask is a plain causal one and examples would see each other). Row padding gets positions of its own (a block nobody else sees) and
  labels -100. The batch holds the same examples as the unpacked batch, so its loss (the mean over its
  loss-carrying tokens) and gradients are the unpacked ones; only the padding is gone.
* :func:`packing_is_exact` checks this on the model itself (a model whose attention ignores the position ids'
  restarts would let examples see each other), and :func:`per_row_method` names the methods that act per row
  (prefix and prompt tuning, ReFT), which train unpacked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from adapterhub.data.chat import IGNORE_INDEX
from adapterhub.errors import ConfigError
from adapterhub.runtime import packed_attention
from adapterhub.training.chat_batches import padding_id

# the batch entries that count, for throughput, what a packed batch holds (popped before the forward pass)
EXAMPLES_KEY = "packed_examples"
TOKENS_KEY = "packed_tokens"

# adapter methods that act per row, with why several examples cannot share one row: prefix and prompt tuning add
# tokens or keys/values to each row; ReFT intervenes at positions counted from each row's first and last token
_ADDS_TOKENS = "adds its tokens to each row"
PER_ROW_METHODS = {
    "prefix_tuning": ("prefix tuning", _ADDS_TOKENS),
    "gated_prefix_tuning": ("prefix tuning", _ADDS_TOKENS),
    "prompt_tuning": ("prompt tuning", _ADDS_TOKENS),
    "reft": ("ReFT", "intervenes at the first and last positions of each row, not of each example"),
}


def pack_lengths(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows whose lengths sum to at most ``max_length``, best-fit
    decreasing: longest first (ties: lower index first), each into the fullest row it still fits (ties: the
    earlier row), else a new row. Within a row, indices keep the order they were placed in. Raises
    :class:`ConfigError` for an example longer than ``max_length`` or empty."""
    if max_length < 1:
        raise ConfigError(f"max_length must be positive to pack, got {max_length}.")
    for index, length in enumerate(lengths):
        if length < 1:
            raise ConfigError(f"example {index} is empty; every packed example needs at least one token.")
        if length > max_length:
            raise ConfigError(
                f"example {index} has {length} tokens, more than --max-length {max_length}; truncate the "
                "examples to max_length before packing (encode_chat does)."
            )
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        best = -1
        for row, free in enumerate(room):
            if length <= free and (best < 0 or free < room[best]):
                best = row
        if best < 0:
            rows.append([index])
            room.append(max_length - length)
        else:
            rows[best].append(index)
            room[best] -= length
    return rows


def collate_packed(
    items: Sequence[dict[str, Any]], tokenizer: Any, max_length: int
) -> dict[str, torch.Tensor]:
    """Pack ``items`` (features of :func:`adapterhub.training.chat_batches.encode_chat`) into rows of at most
    ``max_length`` tokens (:func:`pack_lengths`), padded on the right to the fullest row.

    Returns ``input_ids``, ``position_ids`` and ``labels``, each (rows, width) long, plus ``packed_examples``
    and ``packed_tokens`` (0-d counts of examples and real tokens, for throughput; pop them before the forward
    pass). Positions restart at 0 at each example and at the row's padding; each example's first label and all
    padding labels are -100."""
    if not items:
        raise ConfigError("cannot collate an empty batch")
    pad_id = padding_id(tokenizer)
    lengths = [len(item["input_ids"]) for item in items]
    rows = pack_lengths(lengths, max_length)
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)  # (rows, width)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (rows, width)
    positions = torch.zeros((len(rows), width), dtype=torch.long)  # (rows, width)
    for r, row in enumerate(rows):
        start = 0
        for index in row:
            n = lengths[index]
            ids[r, start : start + n] = torch.tensor(items[index]["input_ids"], dtype=torch.long)
            labels[r, start + 1 : start + n] = torch.tensor(items[index]["labels"][1:], dtype=torch.long)
            positions[r, start : start + n] = torch.arange(n)
            start += n
        positions[r, start:] = torch.arange(width - start)  # padding: a block of its own
    return {
        "input_ids": ids,
        "position_ids": positions,
        "labels": labels,
        EXAMPLES_KEY: torch.tensor(len(items)),
        TOKENS_KEY: torch.tensor(sum(lengths)),
    }


def per_row_method(model: nn.Module) -> tuple[str, str] | None:
    """The name of an adapter method of ``model``'s active setup that acts per row (prefix or prompt tuning, also
    inside a union, or ReFT) and why packing cannot serve it, or None."""
    store = getattr(model, "_adapterhub", None)
    if store is None or store.current_setup() is None:
        return None
    for adapter in store.adapters.values():
        config = adapter.config
        parts = getattr(config, "configs", None) or (config,)
        for part in parts:
            name = PER_ROW_METHODS.get(str(getattr(part, "method", "")))
            if name is not None:
                return name
    return None


@torch.no_grad()
def packing_is_exact(model: nn.Module, probe_length: int = 4) -> bool:
    """Whether ``model`` (a causal LM) treats restarting position ids with no attention mask as separate
    sequences: the logits of a second example packed behind a first must equal that example's logits alone
    and must not change when the first example's tokens change. Runs three tiny forward passes in eval mode
    (the training mode is restored)."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 4:
        return False
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(2, vocab, (probe_length,), generator=generator)
    other = torch.randint(2, vocab, (probe_length,), generator=generator)
    second = torch.randint(2, vocab, (probe_length,), generator=generator)
    positions = torch.arange(probe_length)
    packed_positions = torch.cat([positions, positions])[None].to(device)  # (1, 2 * probe)
    was_training = model.training
    model.eval()
    try:

        def logits(ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            out = model(input_ids=ids[None].to(device), position_ids=pos, use_cache=False)
            return out.logits[0, -probe_length:].float()  # (probe, vocab)

        alone = logits(second, positions[None].to(device))
        packed = logits(torch.cat([first, second]), packed_positions)
        changed = logits(torch.cat([other, second]), packed_positions)
    finally:
        model.train(was_training)
    dtype = next(model.parameters()).dtype
    tolerance = (1e-3 if dtype == torch.float32 else 3e-2) * (1.0 + float(alone.abs().max()))
    return bool((packed - alone).abs().max() <= tolerance and (changed - alone).abs().max() <= tolerance)


@torch.no_grad()
def segment_attention_is_exact(model: nn.Module) -> bool:
    """Whether ``model`` (a causal LM whose configs use ``sdpa``) gives the same logits for a packed batch with
    attention per segment (:mod:`adapterhub.runtime.packed_attention`) as with transformers' block-diagonal mask,
    and its attention modules really reached the function. Two tiny forward passes in eval mode (the training
    mode is restored)."""
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 4 or packed_attention.unsupported_reason(model) is not None:
        return False
    device = next(model.parameters()).device
    ids = torch.randint(2, vocab, (2, 8), generator=torch.Generator().manual_seed(0)).to(device)  # (2, 8)
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 0, 1]], device=device)  # (2, 8)
    was_training = model.training
    model.eval()
    try:
        masked = model(input_ids=ids, position_ids=positions, use_cache=False).logits.float()
        with packed_attention.enabled(model, segments=True):
            before = packed_attention.runs()
            extra = packed_attention.segment_kwargs(positions)
            split = model(input_ids=ids, position_ids=positions, use_cache=False, **extra).logits.float()
            reached = packed_attention.runs() > before
    except ConfigError:  # e.g. an attention that soft-caps its scores refuses to run per segment
        return False
    finally:
        model.train(was_training)
    dtype = next(model.parameters()).dtype
    tolerance = (1e-4 if dtype == torch.float32 else 3e-2) * (1.0 + float(masked.abs().max()))
    return reached and bool((split - masked).abs().max() <= tolerance)


def resolve_segment_attention(model: nn.Module) -> tuple[bool, str | None]:
    """Whether packed training batches run attention per segment, and the one line to print when they keep
    transformers' dense block-diagonal mask instead (a model not on ``sdpa``, or whose attention the probe of
    :func:`segment_attention_is_exact` finds different: soft-capping, sinks, a module that bypasses the attention
    registry)."""
    reason = packed_attention.unsupported_reason(model)
    if reason is None and not segment_attention_is_exact(model):
        reason = f"{type(model).__name__}'s attention does not run per segment like its masked attention"
    if reason is None:
        return True, None
    return False, f"packed rows keep the dense block-diagonal attention mask ({reason})"


def packed_step(model: nn.Module, batch: dict[str, Any], per_segment: bool) -> AbstractContextManager[None]:
    """The context to run one packed training batch's forward AND backward pass in (checkpointing recomputes
    attention during the backward pass). With ``per_segment`` it adds ``cu_seq_lens_q`` / ``cu_seq_lens_k`` of
    ``batch['position_ids']`` to ``batch`` (in place) and names the per-segment function in the model's configs
    for the block, in which transformers builds no dense mask; otherwise it does nothing."""
    if not per_segment:
        return contextlib.nullcontext()
    batch.update(packed_attention.segment_kwargs(batch["position_ids"]))
    return packed_attention.enabled(model, segments=True)


def resolve_packing(requested: bool | None, model: nn.Module) -> tuple[bool, str | None]:
    """Whether to pack a generation task's training batches, and the one line to print when packing was
    wanted by default but cannot be exact. ``requested``: None packs where exact (else unpacked, with the
    line), True packs or raises :class:`ConfigError` saying why it cannot, False never packs."""
    if requested is False:
        return False, None
    per_row = per_row_method(model)
    if per_row is not None:
        method, why = per_row
        if requested:
            raise ConfigError(
                f"--packing is not exact with {method}: it {why}, so several examples cannot share one; use "
                "--no-packing (or leave the flag out to train unpacked)."
            )
        return (
            False,
            f"{method} {why}: training unpacked (packing is exact only for methods that act on every token alike)",
        )
    if not packing_is_exact(model):
        reason = (
            f"{type(model).__name__} lets packed examples attend to each other (its attention does not restart "
            "at the position ids' restarts)"
        )
        if requested:
            raise ConfigError(f"--packing is not exact here: {reason}; use --no-packing.")
        return False, reason + ": training unpacked"
    return True, None

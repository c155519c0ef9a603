"""The generation engine's KV cache: a persistent pool of per-sequence slots, a token budget, and the cache of one
step, written in place.

``KVPool`` (one per engine) holds, per layer, keys and values of shape ``(kv_heads, slots, width, head_dim)``:
``slots`` = the engine's ``max_num_seqs``, ``width`` grown (doubling, the stored tokens copied) to the longest
sequence's history and dropped between steps when no sequence holds a slot. Each running sequence owns a ``SequenceKV``: its
slot, its ``length`` (tokens stored at positions ``[0, length)`` of the slot, left-aligned) and its ``capacity``,
the tokens counted against the budget. By default ``capacity`` = prompt + max new tokens, reserved at admission,
and ``CacheBudget`` counts the reservations of all sequences against ``max_cache_tokens``: a request waits until
its whole reservation fits, so a running sequence never runs out of room. With ``block`` (the engine's ``preempt``
mode) the capacity grows in whole blocks of ``block`` tokens as it fills, and the scheduler preempts sequences when
the blocks held would exceed the budget (``gen_preempt``). Freeing a sequence gives its slot back at once.

A step never copies a sequence's cache into a batch cache and back. Its ``SlotCache`` (a transformers
``DynamicCache`` whose ``update`` is ours) writes each layer's new keys and values straight into the fed
sequences' slots (one indexed write per layer: token ``k`` of row ``i`` to slot ``s_i`` at position ``P_i + k``)
and hands the attention a view or one gather of the pool:

- one row per sequence (``build_step``): row ``i`` holds ``P_i`` cached tokens and ``n_i`` new ones; with
  ``T = max n_i`` the fed tokens are right-aligned in ``(B, T)`` inputs, and the attention sees the slots' first
  ``W' = max (P_i + n_i)`` positions, ``(B, kv_heads, W', head_dim)`` (a view of the pool when the rows are
  consecutive slots in order, else one ``index_select``). The 4-D additive mask ``(B, 1, T, W')`` lets row ``i``'s query
  at true position ``q = P_i + k`` see its slot's positions ``<= q`` (a padding query sees position 0);
- one packed row (``gen_packed``): the keys every sequence's cached then new tokens in segment order, one
  ``index_select`` of the pool seen as ``(kv_heads, slots * width, head_dim)`` (already in the attention's
  layout), under ``PackedRow``'s block-diagonal mask.

Slots are the pool's second dimension so that both reads need no transpose copy: a slot's position ``p`` is flat
index ``slot * width + p``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from adapterhub.errors import ConfigError


class KVPool:
    """Per-layer key/value buffers ``(kv_heads, slots, width, head_dim)`` shared by one engine's sequences, one slot
    each (see the module docstring). Not thread-safe: the engine takes and gives back slots under its lock, and
    only its stepping thread writes."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.width = 0  # positions every layer's buffers will hold by the next write
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._free = list(range(slots))

    def take(self) -> int:
        if not self._free:
            raise ConfigError(
                f"All {self.slots} cache slots are taken (the scheduler admits at most max_num_seqs sequences, so "
                "this is a bug in the caller)."
            )
        self._free.sort()
        return self._free.pop(0)

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def trim(self) -> None:
        """Drop the buffers when no sequence holds a slot (the memory goes back); called between steps."""
        if len(self._free) == self.slots:
            self.keys, self.values, self.width = [], [], 0

    def reserve(self, width: int) -> None:
        """Make every layer hold at least ``width`` positions by its next write (doubling)."""
        if width > self.width:
            self.width = max(width, 2 * self.width)

    def layer(self, index: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s buffers, made (shaped as ``like``: ``(B, kv_heads, T, head_dim)``) or widened to
        ``width`` first."""
        while len(self.keys) <= index:
            self.keys.append(like.new_zeros((like.shape[1], self.slots, 0, like.shape[3])))
            self.values.append(like.new_zeros((like.shape[1], self.slots, 0, like.shape[3])))
        for buffers in (self.keys, self.values):
            old = buffers[index]
            if old.shape[2] < self.width:
                new = old.new_zeros((old.shape[0], old.shape[1], self.width, old.shape[3]))
                new[:, :, : old.shape[2]] = old
                buffers[index] = new
        return self.keys[index], self.values[index]


@dataclass(eq=False)
class SequenceKV:
    """One sequence's cache: its ``slot`` of ``pool`` (bound when it first runs), ``length`` tokens stored,
    ``capacity`` tokens counted against the budget; ``block``: 0 for a fixed ``capacity``, else it grows to the
    next multiple of ``block`` tokens when a write does not fit."""

    capacity: int
    block: int = 0
    length: int = 0
    pool: KVPool | None = None
    slot: int = -1

    def bind(self, pool: KVPool) -> None:
        """Take a slot of ``pool`` (once)."""
        if self.pool is None:
            self.pool, self.slot = pool, pool.take()

    @property
    def keys(self) -> list[torch.Tensor]:
        """Per layer, this sequence's keys ``(kv_heads, width, head_dim)`` (the first ``length`` are stored)."""
        return [] if self.pool is None else [k[:, self.slot] for k in self.pool.keys]

    @property
    def values(self) -> list[torch.Tensor]:
        return [] if self.pool is None else [v[:, self.slot] for v in self.pool.values]

    def check_room(self, n: int) -> None:
        """Count ``n`` more tokens against the capacity (growing it by blocks when ``block``)."""
        if self.length + n > self.capacity and self.block:
            self.capacity = -(-(self.length + n) // self.block) * self.block
        if self.length + n > self.capacity:
            raise ConfigError(
                f"A sequence's cache holds {self.capacity} tokens; {self.length + n} do not fit (the engine "
                "reserves prompt + max_new_tokens at admission, so this is a bug in the caller)."
            )

    def advance(self, n: int) -> None:
        """``n`` tokens were written after the ``length`` stored."""
        self.check_room(n)
        self.length += n

    def free(self) -> None:
        """Give the slot back (the pool's memory goes back after the step once no sequence holds one)."""
        if self.pool is not None:
            self.pool.release(self.slot)
        self.pool, self.slot, self.length = None, -1, 0


class CacheBudget:
    """Tokens reserved by admitted sequences against ``capacity`` (not thread-safe: the engine's lock guards it)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def fits(self, tokens: int) -> bool:
        return self.used + tokens <= self.capacity

    def reserve(self, tokens: int) -> None:
        if not self.fits(tokens):
            raise ConfigError(f"{tokens} cache tokens do not fit ({self.used} of {self.capacity} in use).")
        self.used += tokens

    def release(self, tokens: int) -> None:
        self.used = max(0, self.used - tokens)


class SlotCache(DynamicCache):
    """The cache of one step over a ``KVPool``. ``update`` writes the new keys / values ``(B, kv_heads, T, head_dim)``
    in place: ``new[row[n], :, col[n]]`` to flat index ``dest[n]`` (slot * width + position) of every fed token
    ``n``; it returns ``(B, kv_heads, width, head_dim)`` rows of the slots ``rows`` (None: slots ``first..first+B-1``, a view)
    when ``flat`` is None, else the keys at flat indices ``flat`` ``(K,)`` as one row ``(1, kv_heads, K, head_dim)``;
    with ``whole`` the layer's buffers themselves ``(kv_heads, slots, width, head_dim)`` (``gen_slot_attention``).
    ``seen``: the cached tokens before this step (``get_seq_length``); ``in_order``: the fed tokens are the whole
    input row ``0`` in order (a packed step: ``row`` all 0, ``col`` = ``0..N-1``), so the new keys are written
    from ``key_states[0]`` as they are, with no gather."""

    def __init__(
        self,
        pool: KVPool,
        write: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        seen: int,
        width: int = 0,
        rows: torch.Tensor | None = None,
        flat: torch.Tensor | None = None,
        first: int = 0,
        whole: bool = False,
        in_order: bool = False,
    ) -> None:
        super().__init__()
        self.pool, self.write, self.seen, self.width = pool, write, seen, width
        self.rows, self.flat, self.first, self.whole = rows, flat, first, whole
        self.in_order = in_order

    def update(  # type: ignore[override]
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.pool.layer(layer_idx, key_states)  # (kv_heads, slots, width, head_dim)
        heads, slots, width, dim = keys.shape
        flat_keys = keys.view(heads, slots * width, dim)
        flat_values = values.view(heads, slots * width, dim)
        row, col, dest = self.write
        if self.in_order:  # one packed row: its N fed tokens as they are
            new_keys, new_values = key_states[0], value_states[0]  # (kv_heads, N, head_dim)
        else:
            new_keys = key_states[row, :, col].transpose(0, 1)  # (kv_heads, N, head_dim)
            new_values = value_states[row, :, col].transpose(0, 1)
        flat_keys.index_copy_(1, dest, new_keys)  # position dest[n] <- fed token n
        flat_values.index_copy_(1, dest, new_values)
        if (
            self.whole
        ):  # the layer's buffers (kv_heads, slots, width, head_dim): attention per slot reads them
            return keys, values
        if self.flat is not None:  # (1, kv_heads, K, head_dim)
            return flat_keys.index_select(1, self.flat)[None], flat_values.index_select(1, self.flat)[None]
        batch = int(key_states.shape[0])
        if self.rows is None:  # the step's rows are slots first..first+B-1: a view, no copy
            end = self.first + batch
            k, v = keys[:, self.first : end, : self.width], values[:, self.first : end, : self.width]
        else:
            k = keys[:, :, : self.width].index_select(1, self.rows)  # (kv_heads, B, W', head_dim)
            v = values[:, :, : self.width].index_select(1, self.rows)
        return k.transpose(0, 1), v.transpose(0, 1)  # (B, kv_heads, W', head_dim)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen


def write_index(
    caches: Sequence[SequenceKV],
    columns: Sequence[Sequence[int]],
    row_of: Sequence[int],
    width: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(row, col, dest)`` ``(N,)`` each: fed token ``k`` of sequence ``i`` sits at ``(row_of[i], columns[i][k])``
    of the step's new keys and goes to ``caches[i]``'s slot at ``length + k``: flat index ``slot * width + length +
    k`` of a pool ``width`` wide."""
    row, col, dest = [], [], []
    for kv, cols, r in zip(caches, columns, row_of, strict=True):
        kv.check_room(len(cols))  # raises before the forward when the reservation is short
        row += [r] * len(cols)
        col += list(cols)
        first = kv.slot * width + kv.length
        dest += range(first, first + len(cols))
    return tuple(torch.tensor(x, dtype=torch.long, device=device) for x in (row, col, dest))  # type: ignore[return-value]


@dataclass
class StepBatch:
    """The model inputs of one step. ``input_ids`` / ``position_ids``: ``(B, T)``; ``attention_mask``:
    ``(B, 1, T, W')``; ``cache``: the step's ``SlotCache``; ``new_tokens``: ``n_i`` per row."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: SlotCache
    new_tokens: list[int]

    def places(self) -> list[tuple[int, int]]:
        """``(row, first column)`` of each row's fed tokens in ``input_ids`` (right-aligned)."""
        span = int(self.input_ids.shape[1])
        return [(i, span - n) for i, n in enumerate(self.new_tokens)]


def build_step(
    caches: Sequence[SequenceKV],
    new_ids: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    pool: KVPool,
    dtype: torch.dtype,
) -> StepBatch:
    """The inputs of one step, one row per sequence: row ``i`` continues ``caches[i]`` (bound to ``pool``) with the
    tokens ``new_ids[i]``; ``dtype``: the mask's (the model's compute dtype)."""
    rows = len(caches)
    span = max(len(ids) for ids in new_ids)
    lengths = [kv.length for kv in caches]
    counts = [len(ids) for ids in new_ids]
    width = max(p + n for p, n in zip(lengths, counts, strict=True))
    pool.reserve(width)
    input_ids = torch.full((rows, span), pad_id, dtype=torch.long)
    for i, ids in enumerate(new_ids):
        input_ids[i, span - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
    cached = torch.tensor(lengths)[:, None]  # (B, 1)
    fed = torch.tensor(counts)[:, None]
    column = torch.arange(span)[None, :]  # (1, T)
    query = cached + column - (span - fed)  # (B, T): true position of each fed token (< P_i on padding)
    real = column >= span - fed
    position_ids = torch.where(real, query, 0)
    visible = torch.arange(width)[None, None, :] <= query.clamp(min=0)[:, :, None]  # (B, T, W')
    mask = torch.zeros((rows, 1, span, width), dtype=dtype)
    mask.masked_fill_(~visible[:, None], torch.finfo(dtype).min)
    slots = [kv.slot for kv in caches]
    write = write_index(caches, [range(span - n, span) for n in counts], range(rows), pool.width, device)
    consecutive = slots == list(range(slots[0], slots[0] + rows))
    order = None if consecutive else torch.tensor(slots, dtype=torch.long, device=device)
    cache = SlotCache(pool, write, seen=max(lengths), width=width, rows=order, first=slots[0])
    return StepBatch(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        attention_mask=mask.to(device),
        cache=cache,
        new_tokens=counts,
    )

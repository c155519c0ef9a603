"""The generation engine's KV cache: one buffer per sequence, a token budget, and the padded batch of one step.

Each running sequence owns a ``SequenceKV``: per layer, keys and values of shape ``(kv_heads, capacity,
head_dim)``, so a prompt is never recomputed and a step appends in place. By default they are allocated once when
it first writes (``capacity`` = prompt + max new tokens, reserved at admission) and ``CacheBudget`` counts the
reserved tokens of all sequences against ``max_cache_tokens``: a request waits until its whole reservation fits,
so a running sequence never runs out of room. With ``block`` (the engine's ``preempt`` mode) the buffers grow in
whole blocks of ``block`` tokens as they fill, and the scheduler preempts sequences when the blocks held would
exceed the budget (``gen_preempt``). Freeing a sequence drops its buffers and returns its tokens at once.

A step's forward runs on a padded batch (``StepBatch``): row ``i`` holds ``P_i`` cached tokens and ``n_i`` new
ones. With ``W = max P_i`` and ``T = max n_i`` the model sees a transformers ``DynamicCache`` of ``W`` slots
(cached keys right-aligned: ``[W - P_i, W)``) and ``T`` new slots (new tokens right-aligned: ``[W + T - n_i,
W + T)``); the 2-D attention mask hides the gaps, ``position_ids`` give the true positions ``P_i + k``. After the
forward, ``new_kv`` takes each row's ``n_i`` new slots back into its own buffer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from adapterhub.errors import ConfigError


@dataclass
class SequenceKV:
    """One sequence's cache. ``keys[l]`` / ``values[l]``: ``(kv_heads, capacity, head_dim)`` of layer ``l``
    (allocated at the first write); ``length``: tokens stored; ``block``: 0 for a fixed ``capacity``, else the
    buffers grow to the next multiple of ``block`` tokens when a write does not fit."""

    capacity: int
    block: int = 0
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    length: int = 0

    def append(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
        """Store ``n`` new tokens: ``keys[l]`` / ``values[l]`` of shape ``(kv_heads, n, head_dim)``."""
        n = int(keys[0].shape[1])
        if self.length + n > self.capacity and self.block:
            self._grow(-(-(self.length + n) // self.block) * self.block)
        if self.length + n > self.capacity:
            raise ConfigError(
                f"A sequence's cache holds {self.capacity} tokens; {self.length + n} do not fit (the engine "
                "reserves prompt + max_new_tokens at admission, so this is a bug in the caller)."
            )
        if not self.keys:
            for k, v in zip(keys, values, strict=True):
                self.keys.append(k.new_zeros((k.shape[0], self.capacity, k.shape[2])))
                self.values.append(v.new_zeros((v.shape[0], self.capacity, v.shape[2])))
        for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.keys[layer][:, self.length : self.length + n] = k
            self.values[layer][:, self.length : self.length + n] = v
        self.length += n

    def _grow(self, capacity: int) -> None:
        """Make room for ``capacity`` tokens, keeping the ``length`` stored."""
        self.capacity = capacity
        if not self.keys:
            return
        for buffers in (self.keys, self.values):
            for layer, old in enumerate(buffers):
                new = old.new_zeros((old.shape[0], capacity, old.shape[2]))  # (kv_heads, capacity, head_dim)
                new[:, : self.length] = old[:, : self.length]
                buffers[layer] = new

    def free(self) -> None:
        """Drop the buffers (the memory goes back at once)."""
        self.keys, self.values, self.length = [], [], 0


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


@dataclass
class StepBatch:
    """The model inputs of one step. ``input_ids`` / ``position_ids``: ``(B, T)``; ``attention_mask``:
    ``(B, W + T)``; ``cache``: the padded ``DynamicCache`` of ``W`` slots; ``new_tokens``: ``n_i`` per row."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: DynamicCache
    width: int
    new_tokens: list[int]

    def places(self) -> list[tuple[int, int]]:
        """``(row, first column)`` of each row's fed tokens in ``input_ids`` (right-aligned)."""
        span = int(self.input_ids.shape[1])
        return [(i, span - n) for i, n in enumerate(self.new_tokens)]

    def new_kv(self, cache: DynamicCache, row: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Row ``row``'s new keys and values per layer, ``(kv_heads, n_row, head_dim)``, from the step's cache."""
        total = self.width + int(self.input_ids.shape[1])
        first = total - self.new_tokens[row]
        keys = [layer.keys[row, :, first:total] for layer in cache.layers]  # type: ignore[index]
        values = [layer.values[row, :, first:total] for layer in cache.layers]  # type: ignore[index]
        return keys, values


def build_step(
    caches: Sequence[SequenceKV], new_ids: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> StepBatch:
    """The padded inputs of one step: row ``i`` continues ``caches[i]`` with the tokens ``new_ids[i]``."""
    rows = len(caches)
    width = max(c.length for c in caches)
    span = max(len(ids) for ids in new_ids)
    input_ids = torch.full((rows, span), pad_id, dtype=torch.long)
    position_ids = torch.zeros((rows, span), dtype=torch.long)
    mask = torch.zeros((rows, width + span), dtype=torch.long)
    for i, (kv, ids) in enumerate(zip(caches, new_ids, strict=True)):
        n = len(ids)
        input_ids[i, span - n :] = torch.tensor(list(ids), dtype=torch.long)
        position_ids[i, span - n :] = torch.arange(kv.length, kv.length + n)
        mask[i, width - kv.length : width] = 1
        mask[i, width + span - n :] = 1
    cache = DynamicCache()
    if width > 0:
        filled = next(c for c in caches if c.keys)
        layers = []
        for layer in range(len(filled.keys)):
            k0, v0 = filled.keys[layer], filled.values[layer]
            keys = k0.new_zeros((rows, k0.shape[0], width, k0.shape[2]))  # (B, kv_heads, W, head_dim)
            values = v0.new_zeros((rows, v0.shape[0], width, v0.shape[2]))
            for i, kv in enumerate(caches):
                if kv.length:
                    keys[i, :, width - kv.length :] = kv.keys[layer][:, : kv.length]
                    values[i, :, width - kv.length :] = kv.values[layer][:, : kv.length]
            layers.append((keys, values))
        cache = DynamicCache(ddp_cache_data=layers)
    return StepBatch(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        attention_mask=mask.to(device),
        cache=cache,
        width=width,
        new_tokens=[len(ids) for ids in new_ids],
    )

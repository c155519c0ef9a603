"""The generation engine's packed step (``GenerationEngine(packed=True)``): every sequence's fed tokens in ONE row.

Row ``i`` of the padded step (``kv_cache.build_step``) becomes segment ``i`` of a ``(1, T)`` row with
``T = Σ n_i`` (no padding). The model sees a transformers ``DynamicCache`` of ``C = Σ P_i`` slots holding every
sequence's cached keys and values one after the other (segment order), the segments' positions ``P_i + k``, and the
4-D block-diagonal causal mask of ``runtime/packing.PackedRow`` (a token sees only its own sequence's cached and
earlier new keys). Its adapter setup is the row's ``Split`` over positions (one slice per adapter, rows being
ordered adapter by adapter). The logits kept are each segment's last token's (``logits_to_keep`` = the segments'
last indices); after the forward, ``new_kv`` takes segment ``i``'s ``n_i`` new slots, at ``C + start_i``, back into
its own buffer. Prefill, chunks, recomputes and decode steps all pack the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from adapterhub.runtime.packing import PackedRow
from adapterhub.serving.kv_cache import SequenceKV


@dataclass
class PackedStep:
    """The model inputs of one packed step. ``input_ids`` / ``position_ids``: ``(1, T)``; ``attention_mask``:
    ``(1, 1, T, C + T)``; ``cache``: the ``DynamicCache`` of ``C`` slots; ``last``: ``(S,)`` each segment's last
    token index (``logits_to_keep``); ``new_tokens``: ``n_i`` per segment; ``row``: the segments."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: DynamicCache
    width: int
    new_tokens: list[int]
    last: torch.Tensor
    row: PackedRow

    def new_kv(self, cache: DynamicCache, segment: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Segment ``segment``'s new keys and values per layer, ``(kv_heads, n, head_dim)``, from the step's cache."""
        first = self.width + self.row.starts[segment]
        end = first + self.new_tokens[segment]
        keys = [layer.keys[0, :, first:end] for layer in cache.layers]  # type: ignore[index]
        values = [layer.values[0, :, first:end] for layer in cache.layers]  # type: ignore[index]
        return keys, values

    def places(self) -> list[tuple[int, int]]:
        """``(row, first column)`` of each segment's fed tokens in ``input_ids``."""
        return [(0, start) for start in self.row.starts]


def build_packed_step(
    caches: Sequence[SequenceKV],
    new_ids: Sequence[Sequence[int]],
    setups: Sequence[Any],
    device: torch.device,
    dtype: torch.dtype,
) -> PackedStep:
    """The packed inputs of one step: segment ``i`` runs ``setups[i]`` on ``new_ids[i]``, continuing ``caches[i]``;
    ``dtype``: the mask's (the model's compute dtype)."""
    row = PackedRow(list(setups), [len(ids) for ids in new_ids], [kv.length for kv in caches])
    input_ids = torch.tensor([[t for ids in new_ids for t in ids]], dtype=torch.long)  # (1, T)
    width = sum(row.cached)
    cache = DynamicCache()
    if width > 0:
        filled = next(c for c in caches if c.keys)
        layers = []
        for layer in range(len(filled.keys)):
            keys = torch.cat([kv.keys[layer][:, : kv.length] for kv in caches if kv.length], dim=1)
            values = torch.cat([kv.values[layer][:, : kv.length] for kv in caches if kv.length], dim=1)
            layers.append((keys[None], values[None]))  # (1, kv_heads, C, head_dim)
        cache = DynamicCache(ddp_cache_data=layers)
    return PackedStep(
        input_ids=input_ids.to(device),
        position_ids=row.position_ids(device),
        attention_mask=row.attention_mask(dtype, device),
        cache=cache,
        width=width,
        new_tokens=list(row.lengths),
        last=row.last(device),
        row=row,
    )

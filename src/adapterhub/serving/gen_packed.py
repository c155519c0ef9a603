"""The generation engine's packed step (``GenerationEngine(packed=True)``): every sequence's fed tokens in ONE row.

Row ``i`` of the padded step (``kv_cache.build_step``) becomes segment ``i`` of a ``(1, T)`` row with
``T = Σ n_i`` (no padding). The model sees a transformers ``DynamicCache`` of ``C = Σ P_i`` slots holding every
sequence's cached keys and values one after the other (segment order; gathered from the engine's ``KVPool``), the segments' positions ``P_i + k``, and the
4-D block-diagonal causal mask of ``runtime/packing.PackedRow`` (a token sees only its own sequence's cached and
earlier new keys). Its adapter setup is the row's ``Split`` over positions (one slice per adapter, rows being
ordered adapter by adapter). The logits kept are each segment's last token's (``logits_to_keep`` = the segments'
last indices); the step's ``SlotCache`` writes segment ``i``'s ``n_i`` new keys and values into its own slot at
every layer, in place. Prefill, chunks, recomputes and decode steps all pack the same way.

Which steps pack (``packed_mode``): ``packed=True`` packs every step (the model must take the packed attention,
``check_packed_model``; an adapter that cannot run on a slice of a row is refused at submit); ``packed=False``
never; ``packed=None`` (automatic) packs where the result is exact and attention runs per slot: on a model whose
attention is SDPA every step packs, except a step holding an adapter that cannot run on a slice of a row (prefix
tuning; ``row_reason``), which runs one padded row per sequence; on any other model every step runs rows. Each
reason to run rows is logged once per engine (logger ``adapterhub.serving``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adapterhub.errors import ConfigError
from adapterhub.runtime.packing import PackedRow, check_packable, check_packed_model
from adapterhub.serving.gen_slot_attention import SlotPlan, build_plan, supported
from adapterhub.serving.kv_cache import KVPool, SequenceKV, SlotCache, write_index


@dataclass
class PackedStep:
    """The model inputs of one packed step. ``input_ids`` / ``position_ids``: ``(1, T)``; ``attention_mask``:
    ``(1, 1, T, C + T)``, or None with a ``plan``; ``cache``: the step's ``SlotCache`` (it writes the new keys into
    the slots and gathers the ``C + T`` keys in ``PackedRow``'s layout, or with a ``plan`` hands the attention the
    pool's buffers); ``last``: ``(S,)`` each segment's last token index (``logits_to_keep``); ``new_tokens``:
    ``n_i`` per segment; ``row``: the segments; ``plan``: attention per slot (``gen_slot_attention``) or None."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    cache: SlotCache
    new_tokens: list[int]
    last: torch.Tensor
    row: PackedRow
    plan: SlotPlan | None = None

    def places(self) -> list[tuple[int, int]]:
        """``(row, first column)`` of each segment's fed tokens in ``input_ids``."""
        return [(0, start) for start in self.row.starts]


def build_packed_step(
    caches: Sequence[SequenceKV],
    new_ids: Sequence[Sequence[int]],
    setups: Sequence[Any],
    device: torch.device,
    dtype: torch.dtype,
    pool: KVPool,
    per_slot: bool = False,
) -> PackedStep:
    """The packed inputs of one step: segment ``i`` runs ``setups[i]`` on ``new_ids[i]``, continuing ``caches[i]``
    (bound to ``pool``); ``dtype``: the mask's (the model's compute dtype); ``per_slot``: attention per slot over
    the pool (``gen_slot_attention``: no gathered keys, no dense mask) instead of the block-diagonal mask."""
    row = PackedRow(list(setups), [len(ids) for ids in new_ids], [kv.length for kv in caches])
    input_ids = torch.tensor([[t for ids in new_ids for t in ids]], dtype=torch.long)  # (1, T)
    pool.reserve(max(kv.length + len(ids) for kv, ids in zip(caches, new_ids, strict=True)))
    starts = row.starts
    columns = [range(s, s + n) for s, n in zip(starts, row.lengths, strict=True)]
    write = write_index(caches, columns, [0] * len(caches), pool.width, device)
    # (1, T): each token's position in its own sequence, as PackedRow.position_ids, built in one call
    positions = [p for c, n in zip(row.cached, row.lengths, strict=True) for p in range(c, c + n)]
    position_ids = torch.tensor([positions], dtype=torch.long, device=device)
    if per_slot:
        plan = build_plan([kv.slot for kv in caches], row.cached, row.lengths, device)
        return PackedStep(
            input_ids=input_ids.to(device),
            position_ids=position_ids,
            attention_mask=None,
            cache=SlotCache(pool, write, seen=sum(row.cached), whole=True, in_order=True),
            new_tokens=list(row.lengths),
            last=row.last(device),
            row=row,
            plan=plan,
        )
    key_seq, key_pos = row.key_layout()  # (C + T,): which segment, which position
    flat = torch.tensor([kv.slot for kv in caches], dtype=torch.long)[key_seq] * pool.width + key_pos
    cache = SlotCache(pool, write, seen=sum(row.cached), flat=flat.to(device), in_order=True)
    return PackedStep(
        input_ids=input_ids.to(device),
        position_ids=position_ids,
        attention_mask=row.attention_mask(dtype, device),
        cache=cache,
        new_tokens=list(row.lengths),
        last=row.last(device),
        row=row,
    )


def packed_mode(model: Any, packed: bool | None, configs: Sequence[Any]) -> tuple[bool, str | None]:
    """``(whether steps may pack, why not)`` for ``GenerationEngine(packed=...)`` on ``model`` whose attention
    configs are ``configs`` (``gen_slot_attention.configs_of``): ``True`` raises a ``ConfigError`` when the model
    cannot take a packed row; ``None`` (automatic) packs on SDPA models only (attention per slot) and otherwise
    says why it runs rows (see the module docstring)."""
    if packed is not None and not isinstance(packed, bool):
        raise ConfigError(
            f"packed must be True, False or None (packed wherever it is exact and supported), got {packed!r}."
        )
    if packed is False:
        return False, None
    if packed:
        check_packed_model(model)
        return True, None
    try:
        check_packed_model(model)
    except ConfigError as error:
        return False, str(error)
    if not supported(configs):
        kinds = sorted({str(c._attn_implementation) for c in configs})
        return False, (
            f"packed steps attend per slot on SDPA models and this model uses {', '.join(kinds)}; call "
            "model.set_attn_implementation('sdpa') to pack its steps"
        )
    return True, None


def row_reason(setups: Sequence[Any], adapters: Any) -> str | None:
    """Why a step whose segments run ``setups`` (names, compositions or None) cannot pack: the refusal of the
    first adapter that cannot run on a slice of a row (``check_packable``), else None."""
    for setup in dict.fromkeys(setups):
        try:
            check_packable(setup, adapters)
        except ConfigError as error:
            return str(error)
    return None

"""Attention per segment for packed rows: ``"adapterhub_packed_sdpa"``, an attention function registered with
transformers' ``AttentionInterface``.

A packed batch ``(B, T)`` holds several examples per row, each a *segment* whose position ids restart at 0. With
the model's own ``sdpa`` the segments are kept apart by a dense ``(B, 1, T, T)`` block-diagonal mask: attention
costs ``B·T²`` and SDPA with an arbitrary mask cannot take its fused causal kernels. This function computes the same
attention segment by segment: for a segment ``s`` of ``l_s`` tokens, ``softmax(Q_s K_sᵀ · scale + causal) V_s``,
which costs ``Σ l_s²``.

Selection is per call, as transformers' padding-free path does it: a call that carries ``cu_seq_lens_q`` /
``cu_seq_lens_k`` (:func:`segment_kwargs`: int32 ``(S + 1,)`` cumulative segment lengths over the flattened
``B·T`` tokens, the convention of ``flash_attention_2``'s varlen path) runs per segment; any other call is handed to
transformers' ``sdpa`` with its very arguments (bit-identical). The model's ``config._attn_implementation`` names
this function only while :func:`enabled` is entered (the training loop, around each packed batch's forward and
backward pass); for other calls the mask transformers builds for the name is ``sdpa``'s, so nothing changes for
other callers of the model. Inside ``enabled(model, segments=True)`` (a context variable: this thread or task
only) transformers builds no dense mask at all: the calls there are packed calls, which never read one.

Segments are grouped into buckets of similar length (the same power of two): each bucket's segments are gathered
into ``(n, H, L_b, D)``, right-padded to the bucket's longest (``L_b``), and run through ONE SDPA call with
``is_causal=True``. Right padding is exact under causal attention: a real query at offset ``j`` sees keys
``0..j`` of its own segment only, never a padding slot; padding queries' outputs are dropped (so they send no
gradient). A sliding window (``sliding_window=w`` in the call, Mistral / Qwen2) adds the band ``q - k < w``. GQA runs
through SDPA's ``enable_gqa`` (query head ``h`` reads key/value head ``h // (H / H_kv)``, as transformers'
``repeat_kv``).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from adapterhub.errors import ConfigError
from adapterhub.runtime.attention_hooks import configs_of

NAME = "adapterhub_packed_sdpa"
BASE = "sdpa"
_PLANS: WeakIdKeyDictionary = WeakIdKeyDictionary()  # cu_seq_lens tensor -> its _Plan (one per call)
_PLANS_LOCK = threading.Lock()
_RUNS = threading.local()  # packed calls run in this thread (the probe checks the function was reached)
# True inside ``enabled(model, segments=True)``: the calls of this context are packed calls, so no dense mask
_SEGMENTS: ContextVar[bool] = ContextVar("adapterhub_packed_segments", default=False)


def segment_kwargs(position_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-call keywords that select attention per segment for a packed batch: ``cu_seq_lens_q`` and
    ``cu_seq_lens_k``, int32 ``(S + 1,)``, the cumulative lengths of the segments of ``position_ids`` ``(B, T)``
    over its flattened ``B·T`` tokens. A segment starts at each row's first token and wherever a position is not
    the previous one plus 1 (transformers' ``find_packed_sequence_indices`` rule); row padding with positions of
    its own is a segment like any other."""
    if position_ids.dim() != 2:
        raise ConfigError(f"position_ids must be (batch, seq), got shape {tuple(position_ids.shape)}.")
    rows, width = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)  # (B, T)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    first = starts.reshape(-1).nonzero().reshape(-1)  # (S,)
    end = torch.tensor([rows * width], device=position_ids.device)
    cu = torch.cat([first, end]).to(torch.int32)  # (S + 1,)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu}


@dataclass(frozen=True)
class _Bucket:
    gather: torch.Tensor  # (n * L,) token index of each slot (padding slots repeat the segment's last token)
    keep: torch.Tensor  # (real,) slots that hold real tokens, in segment order
    count: int  # n: segments in the bucket
    length: int  # L: the bucket's longest segment


@dataclass(frozen=True)
class _Plan:
    buckets: tuple[_Bucket, ...]
    restore: torch.Tensor  # (B * T,) where each token's output lies in the buckets' concatenated outputs


def _plan(cu: torch.Tensor) -> _Plan:
    """Buckets of segments of similar length (``bit_length`` of the length) and the index tensors that gather
    them and put their outputs back in token order. Cached per ``cu_seq_lens`` tensor: every layer of a call,
    and its recompute under checkpointing, reuse one plan."""
    with _PLANS_LOCK:
        cached = _PLANS.get(cu)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    bounds = [int(b) for b in cu.tolist()]
    segments = [(start, stop - start) for start, stop in itertools.pairwise(bounds) if stop > start]
    groups: dict[int, list[tuple[int, int]]] = {}
    for start, length in segments:
        groups.setdefault(length.bit_length(), []).append((start, length))
    buckets: list[_Bucket] = []
    order: list[int] = []
    for key in sorted(groups):
        group = groups[key]
        longest = max(length for _, length in group)
        gather: list[int] = []
        keep: list[int] = []
        for i, (start, length) in enumerate(group):
            gather.extend(start + min(j, length - 1) for j in range(longest))
            keep.extend(i * longest + j for j in range(length))
            order.extend(range(start, start + length))
        device = cu.device
        buckets.append(
            _Bucket(
                torch.tensor(gather, dtype=torch.long, device=device),
                torch.tensor(keep, dtype=torch.long, device=device),
                len(group),
                longest,
            )
        )
    where = torch.tensor(order, dtype=torch.long)
    restore = torch.empty_like(where)
    restore[where] = torch.arange(where.numel())
    plan = _Plan(tuple(buckets), restore.to(cu.device))
    with _PLANS_LOCK:
        _PLANS[cu] = plan
    return plan


def _band(length: int, window: int | None, device: torch.device) -> torch.Tensor | None:
    """``None`` (plain causal) or the (L, L) boolean mask ``k <= q and q - k < window``."""
    if window is None or length <= window:
        return None
    q = torch.arange(length, device=device)[:, None]
    k = torch.arange(length, device=device)[None, :]
    return (k <= q) & (q - k < window)  # (L, L)


def per_segment_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_lens: torch.Tensor,
    *,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention within each segment of ``cu_seq_lens`` (see the module docstring). ``query`` (B, H, T, D),
    ``key`` / ``value`` (B, H_kv, T, D); returns (B, T, H, D) like transformers' attention functions."""
    batch, heads, width, dim = query.shape
    if key.shape[2] != width:
        raise ConfigError(
            f"attention per segment needs as many keys as queries (no key/value cache, no prefix); got "
            f"{key.shape[2]} keys for {width} queries. Call the model with use_cache=False for packed batches."
        )
    if int(cu_seq_lens[-1]) != batch * width:
        raise ConfigError(
            f"cu_seq_lens_q ends at {int(cu_seq_lens[-1])} but the batch holds {batch} x {width} tokens; build "
            "it with segment_kwargs(position_ids) for this batch."
        )
    plan = _plan(cu_seq_lens)
    kv_heads = key.shape[1]
    q = query.transpose(1, 2).reshape(batch * width, heads, dim)  # (B*T, H, D)
    k = key.transpose(1, 2).reshape(batch * width, kv_heads, dim)  # (B*T, H_kv, D)
    v = value.transpose(1, 2).reshape(batch * width, kv_heads, value.shape[-1])  # (B*T, H_kv, Dv)
    outputs = []
    for bucket in plan.buckets:
        n, length = bucket.count, bucket.length

        def take(
            x: torch.Tensor, n: int = n, length: int = length, index: torch.Tensor = bucket.gather
        ) -> Any:
            return x.index_select(0, index).view(n, length, *x.shape[1:]).transpose(1, 2)  # (n, h, L, d)

        band = _band(length, sliding_window, query.device)
        out = nn.functional.scaled_dot_product_attention(
            take(q),
            take(k),
            take(v),
            attn_mask=band,
            dropout_p=dropout,
            is_causal=band is None,
            scale=scaling,
            enable_gqa=kv_heads != heads,
        )  # (n, H, L, Dv)
        out = out.transpose(1, 2).reshape(n * length, heads, out.shape[-1])  # (n*L, H, Dv)
        outputs.append(out.index_select(0, bucket.keep))  # (real, H, Dv)
    joined = torch.cat(outputs).index_select(0, plan.restore)  # (B*T, H, Dv)
    return joined.view(batch, width, heads, joined.shape[-1])  # (B, T, H, Dv)


UNSUPPORTED_KWARGS = ("softcap", "s_aux")  # logit soft-capping (Gemma 2), attention sinks (gpt-oss)


def refuse_unsupported_kwargs(module: nn.Module, kwargs: dict[str, Any], by: str, then: str) -> None:
    """Refuse an attention call passing one of :data:`UNSUPPORTED_KWARGS` (which ``by``, an attention computed
    here, does not apply); ``then`` says what to do instead."""
    for name in UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise ConfigError(
                f"{type(module).__name__} passes {name}= to its attention, which {by} does not apply; {then}"
            )


def call_implementation(
    base: str,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """transformers' attention function ``base`` with the very arguments of the call (what a call that an
    attention function registered here does not take over runs: bit-identical to the model without it)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[base](module, query, key, value, attention_mask, *args, **kwargs)  # type: ignore[no-any-return]


def implementation_mask(base: str, *args: Any, **kwargs: Any) -> Any:
    """transformers' mask function ``base`` with the very arguments of the call."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return ALL_MASK_ATTENTION_FUNCTIONS[base](*args, **kwargs)


def packed_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The registered function: per segment when the call carries ``cu_seq_lens_q``, else transformers' ``sdpa``
    with the same arguments. The dense mask transformers built for the packed call is not read."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None and _SEGMENTS.get():
        raise ConfigError(
            "a model call inside packed_step / enabled(model, segments=True) carries no cu_seq_lens_q, so it has "
            "no mask and no segments; pass segment_kwargs(position_ids) to it or call it outside the block."
        )
    if cu_q is None:
        return call_implementation(BASE, module, query, key, value, attention_mask, *args, **kwargs)
    if cu_k is not None and cu_k is not cu_q and not torch.equal(cu_k, cu_q):
        raise ConfigError(
            "attention per segment needs cu_seq_lens_k equal to cu_seq_lens_q (self-attention)."
        )
    if not getattr(module, "is_causal", True):
        raise ConfigError(
            f"{type(module).__name__} is not causal; packed rows need causal attention. Train unpacked "
            "(--no-packing)."
        )
    refuse_unsupported_kwargs(
        module,
        kwargs,
        "attention per segment",
        "leave packing to transformers' mask (train() does so for such models).",
    )
    _RUNS.count = getattr(_RUNS, "count", 0) + 1
    out = per_segment_attention(
        module,
        query,
        key,
        value,
        cu_q,
        dropout=float(kwargs.get("dropout", 0.0) or 0.0),
        scaling=kwargs.get("scaling"),
        sliding_window=kwargs.get("sliding_window"),
    )
    return out, None


def packed_mask(*args: Any, **kwargs: Any) -> Any:
    """The mask function registered for :data:`NAME`: ``None`` (no mask) for the calls of an
    ``enabled(model, segments=True)`` block, which run per segment and never read one; otherwise ``sdpa``'s."""
    if _SEGMENTS.get():
        return None
    return implementation_mask(BASE, *args, **kwargs)


def register() -> None:
    """Register :data:`NAME` with ``AttentionInterface`` and :func:`packed_mask` with ``AttentionMaskInterface``
    (idempotent)."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, packed_sdpa_attention)
    if NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(NAME, packed_mask)


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model``'s attention cannot run per segment (its configs must all use ``sdpa``), or None."""
    for config in configs_of(model):
        current = config._attn_implementation
        if current not in (BASE, NAME):
            return f"attention per segment replaces 'sdpa'; this model uses {current!r}"
    return None


@contextlib.contextmanager
def enabled(model: nn.Module, segments: bool = False) -> Iterator[None]:
    """Name :data:`NAME` in ``model``'s configs for the block and restore ``sdpa`` after. Calls without
    ``cu_seq_lens_q`` from other threads or contexts behave exactly as before, so this changes nothing for any
    other caller of the model. ``segments``: every call of the block, in this context, is a packed call with
    ``cu_seq_lens_q``; transformers then builds no dense mask for it (:func:`packed_mask`), and a call without
    them raises. Raises :class:`ConfigError` for a model :func:`unsupported_reason` refuses."""
    reason = unsupported_reason(model)
    if reason is not None:
        raise ConfigError(f"{reason}; load it with attn_implementation='sdpa' or train with the mask path.")
    register()
    switched = [config for config in configs_of(model) if config._attn_implementation == BASE]
    for config in switched:
        config._attn_implementation = NAME
    token = _SEGMENTS.set(segments)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)
        for config in switched:
            config._attn_implementation = BASE


def runs() -> int:
    """How many packed calls of the function ran in this thread (for the probe)."""
    return int(getattr(_RUNS, "count", 0))

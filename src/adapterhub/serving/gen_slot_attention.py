"""Attention per segment over the engine's slot pool for a packed step: ``"adapterhub_slot_sdpa"``, an attention
function registered with transformers' ``AttentionInterface``.

A packed step (``gen_packed``) feeds every sequence's new tokens in ONE row ``(1, T)``. With a dense mask the
attention gathers every sequence's cached keys into one row of ``C + T`` keys (``C = Σ P_i``) and scores every
query against all of them: ``T · (C + T)`` scores, most of them masked. Here each query sees only its own
sequence's keys, read straight from its slot of the ``KVPool`` (the step's ``SlotCache`` returns the pool's layer
buffers ``(kv_heads, slots, width, head_dim)`` instead of a gathered row), with ``SlotPlan``:

- the decode segments (one new token each, ``n_i = 1``) run as ONE batched SDPA call: queries ``(D, H_kv, G, d)``
  (the ``G = H / H_kv`` query heads sharing a key head as that head's queries, as transformers' ``pack_gqa``)
  against their slots' first ``W = max (P_i + 1)`` positions ``(D, H_kv, W, d)`` (a view of the pool when the
  slots are consecutive, else one ``index_select``) under a boolean mask ``key position <= P_i``;
- each longer segment (a prompt, a chunk of one, a recompute) runs as its own call: its ``n_i`` queries against its
  slot's ``P_i + n_i`` first positions, causal with the offset ``P_i`` (query ``k`` sees positions ``<= P_i + k``).

That is ``Σ_i n_i · (P_i + n_i)`` scores: exactly what each sequence alone would compute. GQA runs through SDPA's
``enable_gqa`` for the longer segments. The outputs go back in token order ``(1, T, H, d)``.

Selection is per call, as in ``runtime/packed_attention``: the plan lives in a context variable set by
:func:`active` around the engine's forward (this thread or task only); a call without one (any other caller of the
model while a step runs) goes to the implementation the model had before, with the very same arguments, and gets
that implementation's mask. :func:`active` names this function in the model's configs while at least one step
holds it (a count per config, so that overlapping steps of two engines never switch it back under each other), and
inside it transformers builds no mask for the step (the plan replaces it).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adapterhub.errors import ConfigError
from adapterhub.methods.base import ATTENTION
from adapterhub.runtime.attention_hooks import configs_of as configs_of  # the engine takes them from here
from adapterhub.runtime.packed_attention import (
    call_implementation,
    implementation_mask,
    refuse_unsupported_kwargs,
)
from adapterhub.spec.composition import setup_names

NAME = "adapterhub_slot_sdpa"
BASES = (
    "sdpa",
    "adapterhub_sdpa",
)  # what the model may use before: plain SDPA, or SDPA behind adapterhub's hook
_PLAN: ContextVar[SlotPlan | None] = ContextVar("adapterhub_slot_plan", default=None)
_SWITCH = threading.Lock()
_HELD: dict[int, tuple[Any, str, int]] = {}  # id(config) -> (config, implementation before, steps holding it)


@dataclass(frozen=True)
class SlotPlan:
    """Which pool positions each query of a packed row reads. ``decode_tokens`` ``(D,)``: the row index of every
    one-token segment; ``decode_slots`` ``(D,)`` their slots (None when they are ``decode_first ..
    decode_first + D - 1``, read as a view); ``decode_mask`` ``(D, 1, 1, W)``: position ``<= P_i``; ``segments``:
    ``(start, n, slot, cached)`` of every longer segment; ``decode_all``: every token is a one-token segment (a
    decode-only step: the queries are the row as it is, the outputs need no scatter)."""

    decode_tokens: torch.Tensor | None
    decode_slots: torch.Tensor | None
    decode_first: int
    decode_mask: torch.Tensor | None
    segments: tuple[tuple[int, int, int, int], ...]
    total: int
    decode_all: bool = False


def build_plan(
    slots: Sequence[int], cached: Sequence[int], lengths: Sequence[int], device: torch.device
) -> SlotPlan:
    """The plan of a packed row whose segment ``i`` holds ``lengths[i]`` new tokens of the sequence in slot
    ``slots[i]`` with ``cached[i]`` tokens already stored (its new keys are written at ``cached[i] ..`` first)."""
    starts, at = [], 0
    for n in lengths:
        starts.append(at)
        at += n
    one = [i for i, n in enumerate(lengths) if n == 1]
    segments = tuple(
        (starts[i], lengths[i], slots[i], cached[i]) for i in range(len(lengths)) if lengths[i] != 1
    )
    if not one:
        return SlotPlan(None, None, 0, None, segments, at)
    decode_slots = [slots[i] for i in one]
    seen = torch.tensor([cached[i] for i in one], device=device)  # (D,): the new key's position
    width = int(seen.max()) + 1
    mask = torch.arange(width, device=device)[None, :] <= seen[:, None]  # (D, W)
    consecutive = decode_slots == list(range(decode_slots[0], decode_slots[0] + len(one)))
    return SlotPlan(
        decode_tokens=torch.tensor([starts[i] for i in one], dtype=torch.long, device=device),
        decode_slots=None if consecutive else torch.tensor(decode_slots, dtype=torch.long, device=device),
        decode_first=decode_slots[0],
        decode_mask=mask[:, None, None, :],  # (D, 1, 1, W)
        segments=segments,
        total=at,
        decode_all=not segments,
    )


def slot_attention(
    plan: SlotPlan,
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scaling: float | None,
) -> torch.Tensor:
    """``query`` ``(1, H, T, d)``; ``keys`` / ``values``: the pool's layer buffers ``(H_kv, slots, width, d)`` with
    this step's keys already written; returns ``(1, T, H, d)`` (see the module docstring)."""
    _, heads, total, _ = query.shape
    if total != plan.total:
        raise ConfigError(f"the slot plan covers {plan.total} tokens but the row holds {total}.")
    gqa = keys.shape[0] != heads
    out = None if plan.decode_all else query.new_empty((total, heads, values.shape[-1]))  # (T, H, d)
    if plan.decode_tokens is not None and plan.decode_mask is not None:
        count, width = int(plan.decode_tokens.numel()), int(plan.decode_mask.shape[-1])
        if plan.decode_all:  # the row's tokens are the decode queries, in order
            q = query[0].transpose(0, 1)  # (D, H, d)
        else:
            q = query[0].index_select(1, plan.decode_tokens).transpose(0, 1)  # (D, H, d)
        if plan.decode_slots is None:
            first = plan.decode_first
            k = keys[:, first : first + count, :width]  # (H_kv, D, W, d), a view
            v = values[:, first : first + count, :width]
        else:
            k = keys[:, :, :width].index_select(1, plan.decode_slots)
            v = values[:, :, :width].index_select(1, plan.decode_slots)
        # GQA for one query: the query heads sharing key head h become h's ``G = H / H_kv`` queries (no key copies)
        groups = heads // int(keys.shape[0])
        q = q.reshape(count, int(keys.shape[0]), groups, q.shape[-1])  # (D, H_kv, G, d)
        o = nn.functional.scaled_dot_product_attention(
            q, k.transpose(0, 1), v.transpose(0, 1), attn_mask=plan.decode_mask, scale=scaling
        )  # (D, H_kv, G, d)
        if out is None:  # decode only: token i is query i
            return o.reshape(count, heads, o.shape[-1])[None]  # (1, T, H, d)
        out.index_copy_(0, plan.decode_tokens, o.reshape(count, heads, o.shape[-1]))
    assert out is not None  # a plan without decode tokens has segments (decode_all is False)
    for start, n, slot, cached in plan.segments:
        q = query[:, :, start : start + n]  # (1, H, n, d)
        k = keys[:, slot : slot + 1, : cached + n].transpose(0, 1)  # (1, H_kv, P + n, d)
        v = values[:, slot : slot + 1, : cached + n].transpose(0, 1)
        mask = None
        if cached:  # query k sees positions <= P + k
            mask = torch.arange(cached + n, device=query.device)[None, :] <= (
                cached + torch.arange(n, device=query.device)[:, None]
            )  # (n, P + n)
        o = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling, enable_gqa=gqa
        )  # (1, H, n, d)
        out[start : start + n] = o[0].transpose(0, 1)
    return out[None]  # (1, T, H, d)


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    *args: Any,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The registered function: per segment over the pool for the engine's step (a plan in this context), else the
    model's implementation before, with the same arguments."""
    plan = _PLAN.get()
    if plan is None:
        held = _HELD.get(id(getattr(module, "config", None)))
        base = held[1] if held is not None else "sdpa"
        return call_implementation(base, module, query, key, value, attention_mask, *args, **kwargs)
    refuse_unsupported_kwargs(
        module, kwargs, "the engine's attention per slot", "this model cannot run packed."
    )
    return slot_attention(plan, query, key, value, kwargs.get("scaling")), None


def _mask(*args: Any, **kwargs: Any) -> Any:
    """No mask for the engine's step (its plan replaces it); SDPA's for every other call."""
    if _PLAN.get() is not None:
        return None
    return implementation_mask("sdpa", *args, **kwargs)


def register() -> None:
    """Register :data:`NAME` with ``AttentionInterface`` and its mask function (idempotent)."""
    from transformers.masking_utils import AttentionMaskInterface
    from transformers.modeling_utils import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, _attention)
    if NAME not in AttentionMaskInterface._global_mapping:
        AttentionMaskInterface.register(NAME, _mask)


def attention_adapters(adapters: Any, setups: Sequence[Any]) -> bool:
    """Whether an adapter (of the store's ``adapters``) in ``setups`` attaches at attention points: its hook, not
    attention per slot, must run the attention (the engine takes the block-diagonal mask path for that step)."""
    return any(
        ATTENTION in adapters[name].kinds()
        for setup in setups
        for name in setup_names(setup)
        if name in adapters
    )


def supported(configs: Sequence[Any]) -> bool:
    """Whether every attention config (``configs_of(model)``) uses SDPA (plain or behind adapterhub's attention
    hook), or this function already (another step holds it)."""
    return all(c._attn_implementation in (*BASES, NAME) for c in configs)


@contextlib.contextmanager
def active(configs: Sequence[Any], plan: SlotPlan) -> Iterator[None]:
    """Run the block's forward calls, in this context, with ``plan``; name :data:`NAME` in the model's attention
    ``configs`` (``configs_of(model)``) while any step holds it (see the module docstring)."""
    register()
    with _SWITCH:
        for config in configs:
            held = _HELD.get(id(config))
            if held is None:
                before = config._attn_implementation
                if before not in BASES:
                    raise ConfigError(
                        f"attention per slot replaces 'sdpa'; this model uses {before!r}. Call "
                        "model.set_attn_implementation('sdpa') or run the engine unpacked."
                    )
                _HELD[id(config)] = (config, before, 1)
                config._attn_implementation = NAME
            else:
                _HELD[id(config)] = (held[0], held[1], held[2] + 1)
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)
        with _SWITCH:
            for config in configs:
                held = _HELD[id(config)]
                if held[2] == 1:
                    del _HELD[id(config)]
                    config._attn_implementation = held[1]
                else:
                    _HELD[id(config)] = (held[0], held[1], held[2] - 1)

"""Several LoRA adapters at one projection in one computation: the row blocks of a ``BatchSplit`` and the token
slices of a ``Split`` (a packed row's segments), as ``LoRAAdapter.batch_split_grouped`` / ``split_grouped`` ask.

Adapter ``k`` (``A_k: (r, d_in)``, ``B_k: (d_out, r)``, scale ``s_k``) owns a block of rows or a slice of token
positions; each of its tokens ``x_t`` gets exactly ``y_t + s_k B_k A_k x_t``. Two layouts:

- stacked (equal ranks): ``Δ_k = s_k · (X_k A_kᵀ) B_kᵀ`` by two batched matmuls over the ``(K, n, d_in)`` tokens of
  the K blocks, each of ``n`` tokens (a decode step: ``n = 1``, a batched matrix-vector product per adapter,
  ``T · r · (d_in + d_out)`` multiply-adds in all); row blocks of unequal sizes gather each row's weights;
- side by side: ``Δ = ((X A) ⊙ M) B`` with ``A = [A_1; ...; A_K]ᵀ: (d_in, R)``, ``B = [B_1, ..., B_K]ᵀ: (R, d_out)``,
  ``R = Σ r_k``, and ``M: (T, R)`` holding ``s_k`` on the columns of the adapter owning token ``t``, 0 elsewhere
  (token slices of unequal lengths, or tokens with no adapter between). It costs ``K`` times the multiply-adds of
  the stacked layout and is refused when ``R > d_in`` (the slices one by one are then cheaper).

Equal ranks read the factors from slot stacks ``A: (S, r, d_in)``, ``Bᵀ: (S, r, d_out)`` kept in the caller's cache
under a forward pass's plan (``grouped_weights.planned``): only adapters new to the stacks are copied, the others
stay in their slots, so the tokens are taken in slot order (a permutation of the ``K`` groups, or of the mask's
column blocks) instead of the weights being joined again; without a plan (no cache, gradients on, active dropout,
torch.compile tracing) they are stacked afresh in the mix's order. Ranks that differ use the joined ``(d_in, R)``
/ ``(R, d_out)``, kept under the plan likewise (``grouped_weights.joined``). Masks, scale columns and index tensors
are pure functions of their arguments, memoised. Each adapter's layer is found through the modules' own
dictionaries (the hot path of a generation step: one lookup per adapter and point).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import torch

from adapterhub.methods import grouped_weights
from adapterhub.methods.base import LINEAR, LinearInputs, Point, PointInputs
from adapterhub.methods.lora_layers import LoRALayer


def point_layers(modules: Sequence[Any], layer: int, point: Point) -> list[LoRALayer]:
    """Each adapter's ``LoRALayer`` at ``(layer, point)``: a spec point straight from ``layers[str(layer)][name]``
    (the ``nn.ModuleDict`` entries, without ``nn.Module`` attribute lookups), anything else by ``layer_at``."""
    if point[0] == LINEAR:
        key, name = str(layer), point[1]
        try:
            return [m._modules["layers"]._modules[key]._modules[name] for m in modules]
        except KeyError:
            pass
    return [m.layer_at(layer, point) for m in modules]


class _Group(NamedTuple):
    """The layers of one grouped computation and what it reads of them, in the mix's order."""

    layers: list[LoRALayer]
    pairs: list[tuple[torch.Tensor, torch.Tensor]]  # (A_k (r, d_in), B_k (d_out, r))
    ranks: tuple[int, ...]
    scales: tuple[float, ...]
    dropout: float


def _group(modules: Sequence[Any], layer: int, point: Point) -> _Group | None:
    """The adapters' layers at the point in one pass, or None when they cannot run as one computation: a layer that
    is not a plain linear LoRA layer (an embedding or convolution LoRA, a subclass's layer that computes otherwise:
    an SVD or DoRA layer) or dropouts that differ (the blocks then run one by one)."""
    layers = point_layers(modules, layer, point)
    pairs, ranks, scales, p = [], [], [], None
    for lora in layers:
        if type(lora) is not LoRALayer or lora.embedding:
            return None
        dropout: Any = lora._modules["dropout"]
        if p is not None and dropout.p != p:
            return None
        p = dropout.p
        params: Any = lora._parameters
        a = params["lora_A"]
        pairs.append((a, params["lora_B"]))
        ranks.append(int(a.shape[0]))
        scales.append(float(lora.scaling))
    return _Group(layers, pairs, tuple(ranks), tuple(scales), float(p or 0.0))


def stacked(
    pairs: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """``(A (K, r, d_in), Bᵀ (K, r, d_out), order)``: the factor pairs stacked afresh in the mix's order (``order``
    ``0..K-1``), where no plan keeps slot stacks (no cache, gradients on, active dropout, torch.compile tracing)."""
    a = torch.stack([a for a, _ in pairs])  # (K, r, d_in)
    bt = torch.stack([b.t() for _, b in pairs])  # (K, r, d_out)
    return a, bt, tuple(range(len(pairs)))


class _Planned(NamedTuple):
    """Equal-rank slot stacks under a forward pass's plan (``grouped_weights.planned``)."""

    a: torch.Tensor  # (S, r, d_in)
    bt: torch.Tensor  # (S, r, d_out)
    order: tuple[int, ...]  # order[s]: the group in slot s
    slot_scales: tuple[float, ...]  # the scale of the group in slot s
    scales: tuple[float, ...]  # the scale of group k (the mix's order)


def _planned(modules: Sequence[Any], layer: int, point: Point) -> _Planned | None:
    """The slot stacks of the adapters' layers at the point under the running pass's plan (each adapter checked once
    per pass, not here), or None: no plan running, ranks that differ, or a layer the stacked layout does not take
    (not a plain linear LoRA layer, or dropout that is active: the regular way then decides)."""

    def fetch(k: int) -> tuple[tuple[torch.Tensor, torch.Tensor], float] | None:
        (lora,) = point_layers([modules[k]], layer, point)
        dropout: Any = lora._modules.get("dropout") if type(lora) is LoRALayer else None
        if dropout is None or lora.embedding or (dropout.p and dropout.training):
            return None
        params: Any = lora._parameters
        return (params["lora_A"], params["lora_B"].t()), float(lora.scaling)  # A (r, d_in), Bᵀ (r, d_out)

    got = grouped_weights.planned(("lora.plan", layer, point), modules, fetch)
    if got is None:
        return None
    (a, bt), order, infos = got
    slot_scales = tuple(infos)
    scales = [0.0] * len(order)
    for slot, k in enumerate(order):
        scales[k] = slot_scales[slot]
    return _Planned(a, bt, order, slot_scales, tuple(scales))


def _in_slots(
    x: torch.Tensor, order: tuple[int, ...], a: torch.Tensor, bt: torch.Tensor, slot_scales: tuple[float, ...]
) -> torch.Tensor:
    """``Δ`` of groups ``x`` ``(K, n, d_in)`` (group ``k``: adapter ``k``'s tokens) through the slot stacks: the
    groups taken in slot order, ``s_k · (x_k A_kᵀ) B_kᵀ`` by two batched matmuls, and put back: ``(K, n, d_out)``.
    ``slot_scales[s]``: the scale of the group in slot ``s``."""
    identity = order == tuple(range(len(order)))
    if not identity:
        x = x[grouped_weights.order_index(order, x.device)]  # (S, n, d_in): slot s holds group order[s]
    scale = _scale_column(slot_scales, x.dtype, x.device)  # (S, 1, 1)
    delta = torch.bmm(torch.bmm(x, a.transpose(1, 2).to(x.dtype)), bt.to(x.dtype)) * scale  # (S, n, d_out)
    return (
        delta
        if identity
        else delta[grouped_weights.order_index(grouped_weights.slot_inverse(order), x.device)]
    )  # (K, n, d_out)


def batch_split(
    modules: Sequence[Any], layer: int, point: Point, inputs: PointInputs, sizes: Sequence[int]
) -> torch.Tensor | None:
    """Row block ``k`` (``sizes[k]`` rows) through adapter ``k``: the stacked layout (equal sizes: ``(K, rows·T,
    d_in)`` blocks; otherwise each row's weights gathered). None when ranks or dropouts differ or a layer is not a
    plain linear LoRA layer."""
    assert isinstance(inputs, LinearInputs)
    x, y = inputs.x, inputs.y  # (B, T, d_in), (B, T, d_out)
    plan = _planned(modules, layer, point)
    if plan is None:
        group = _group(modules, layer, point)
        if group is None or len(set(group.ranks)) != 1:
            return None
        if group.dropout > 0:
            x = group.layers[0].dropout(x)
        a, bt, order = stacked(group.pairs)
        slot_scales = tuple(group.scales[k] for k in order)
    else:
        a, bt, order, slot_scales = plan.a, plan.bt, plan.order, plan.slot_scales
    if len(set(sizes)) == 1:
        delta = _in_slots(
            x.reshape(len(order), -1, x.shape[-1]), order, a, bt, slot_scales
        )  # (K, rows·T, d_out)
        return y + delta.reshape(y.shape).to(y.dtype)
    slot = grouped_weights.order_index(grouped_weights.slot_inverse(order), x.device)[
        _owner_rows(tuple(sizes), x.device)
    ]  # (B,): each row's slot
    scale = _scale_column(slot_scales, x.dtype, x.device)[slot]  # (B, 1, 1)
    groups = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, T, d_in)
    delta = torch.bmm(torch.bmm(groups, a.transpose(1, 2)[slot].to(x.dtype)), bt[slot].to(x.dtype)) * scale
    return y + delta.reshape(y.shape).to(y.dtype)  # delta: (B, T, d_out)


def split(
    modules: Sequence[Any], layer: int, point: Point, inputs: PointInputs, bounds: Sequence[tuple[int, int]]
) -> torch.Tensor | None:
    """Token slice ``k`` (positions ``bounds[k]``, in order) through adapter ``k``: the stacked layout when the
    slices have equal lengths and ranks and cover the positions end to end (a decode step of sequences that all
    have an adapter), else side by side with the ``(T, R)`` mask (equal ranks: over the slot stacks). None when
    dropouts differ, a layer is not a plain linear LoRA layer, the input is not ``(B, T, d_in)``, or (side by side)
    ``R > d_in``."""
    assert isinstance(inputs, LinearInputs)
    x, y = inputs.x, inputs.y  # (B, T, d_in), (B, T, d_out)
    if x.dim() != 3:
        return None
    plan = _planned(modules, layer, point)
    group = _group(modules, layer, point) if plan is None else None
    if plan is None and group is None:
        return None
    if plan is not None:
        ranks, scales = (int(plan.a.shape[1]),) * len(plan.order), plan.scales
    else:
        assert group is not None
        ranks, scales = group.ranks, group.scales
    length, k = int(x.shape[1]), len(ranks)
    n = length // k
    end_to_end = length == n * k and all(s == i * n and e == s + n for i, (s, e) in enumerate(bounds))
    equal_ranks = len(set(ranks)) == 1
    if not (end_to_end and equal_ranks) and sum(ranks) > x.shape[-1]:
        return None
    if group is not None and group.dropout > 0:
        x = group.layers[0].dropout(x)
    if equal_ranks:
        if plan is not None:
            a, bt, order = plan.a, plan.bt, plan.order
        else:
            assert group is not None
            a, bt, order = stacked(group.pairs)
        if end_to_end:
            batch, d_in = x.shape[0], x.shape[-1]
            groups = (
                x.reshape(batch, k, n, d_in).transpose(0, 1).reshape(k, batch * n, d_in)
            )  # (K, B·n, d_in)
            slot_scales = plan.slot_scales if plan is not None else tuple(scales[j] for j in order)
            delta = _in_slots(groups, order, a, bt, slot_scales)  # (K, B·n, d_out)
            delta = delta.reshape(k, batch, n, -1).transpose(0, 1).reshape(y.shape)  # (B, T, d_out)
            return y + delta.to(y.dtype)
        down, up = a.reshape(-1, a.shape[-1]).t(), bt.reshape(-1, bt.shape[-1])  # (d_in, R), (R, d_out)
        bounds = tuple(bounds[j] for j in order)  # the mask's column blocks in slot order
        ranks, scales = tuple(ranks[j] for j in order), tuple(scales[j] for j in order)
    else:
        assert group is not None
        pairs = group.pairs
        down, up = grouped_weights.joined(
            ("lora.cat", layer, point),
            modules,
            lambda: (
                torch.cat([a for a, _ in pairs]).t(),  # (d_in, R)
                torch.cat([b for _, b in pairs], dim=1).t(),  # (R, d_out)
            ),
        )
    mask = _slice_mask(length, tuple(bounds), ranks, scales, y.dtype, x.device)  # (T, R)
    delta = ((x @ down.to(x.dtype)) * mask) @ up.to(x.dtype)  # (B, T, d_out)
    return y + delta.to(y.dtype)


@lru_cache(maxsize=64)
def _scale_column(scales: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``(K, 1, 1)``: the adapters' scales (memoised; only read)."""
    return torch.tensor(scales, dtype=dtype, device=device).view(-1, 1, 1)


@lru_cache(maxsize=64)
def _owner_rows(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(B,)``: the block of each row (``sizes[k]`` rows of block ``k``, in order; memoised, only read)."""
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(device)


@lru_cache(maxsize=64)
def _slice_mask(
    length: int,
    bounds: tuple[tuple[int, int], ...],
    ranks: tuple[int, ...],
    scales: tuple[float, ...],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``(T, R)``: ``s_k`` where token ``t`` lies in slice ``k`` (``bounds[k]``) and column ``r`` belongs to adapter
    ``k`` (``ranks`` side by side), else 0. A pure function of its arguments, memoised: a packed step asks it with
    the same arguments at every LoRA point (the result is only read)."""
    owner = torch.full((length,), -1, dtype=torch.long)  # (T,): the slice of each token, -1 for none
    for k, (start, end) in enumerate(bounds):
        owner[start:end] = k
    columns = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(ranks))  # (R,)
    scale = torch.tensor(scales, dtype=dtype)[columns]  # (R,)
    return ((owner[:, None] == columns[None, :]).to(dtype) * scale).to(device)  # (T, R)

"""Several bottleneck adapters at one point in one computation: the token slices of a ``Split`` (a packed row's
segments) and the row blocks of a ``BatchSplit``, as ``BottleneckAdapter.split_grouped`` / ``batch_split_grouped``
(and ``ParallelAdapter``'s) ask.

Adapter ``k`` (``W_down_k: (m, d)``, ``W_up_k: (d, m)``, biases, scaling ``s_k``: a number, a learned scalar or a
vector ``(d,)``) owns a block of rows or the positions ``[start_k, end_k)``; each of its tokens ``x_t`` gets exactly
``δ_t = s_k ⊙ (W_up_k f(W_down_k x_t + b_down_k) + b_up_k)`` (the sub-layer's ``BottleneckLayer.delta``), by two
batched matmuls: row blocks of equal sizes as ``(K, rows·T, d)`` (unequal ones: each row with its adapter's weights
gathered), token slices over a ``(K, rows, d)`` layout:

- slices of equal length ``n`` that cover the row end to end in slot order (a packed decode step of sequences that
  all have an adapter: ``n = 1``): the row viewed as ``(K, B·n, d)``, no copy;
- slices of equal length otherwise (a base row between them, or the slots in another order): the slices' positions
  gathered into ``(K, B·n, d)`` and their deltas put back (positions in no slice: ``δ = 0``);
- slices of unequal lengths: each padded to the longest ``L`` (``(K, B·L, d)``, the padding repeats the slice's first
  position and is dropped afterwards) while the padding is at most ``_SLICE_ROWS`` rows per slice (``B·(K·L - Σ
  n_k) ≤ 12·K``: two adjacent sequences on one adapter in a decode step), else the slices' matmuls one after the
  other (a long prefill segment next to decode tokens), still inside one computation.

The stacked weights ``W_downᵀ: (S, d, m)``, ``b_down: (S, m)``, ``W_upᵀ: (S, m, d)``, ``b_up: (S, d)`` and the
scalings as rows ``(S, d)`` come from slot stacks kept in the caller's cache under a forward pass's plan
(``grouped_weights.planned``: only adapters new to the mix are copied); without a plan they are stacked afresh (in
the mix's order). Index tensors are pure functions of their arguments, memoised.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import torch

from adapterhub.methods import grouped_weights
from adapterhub.methods.base import Point

# The padded layout while its padding rows (``B·(K·L - Σ n_k)``) are at most this many per slice: one slice's
# matmuls in the loop cost about as much as 12 rows of the padded layout (measured on SmolLM2-135M's d 576, m 36,
# K 16, one thread: padded wins up to a longest slice of ~8 beside 15 single tokens, the loop beyond).
_SLICE_ROWS = 12


class Stacks(NamedTuple):
    """The adapters' weights at a point, slot ``s`` holding adapter ``order[s]`` of the mix, and the one activation
    and dropout they share."""

    w_down: torch.Tensor  # (S, d, m): W_downᵀ
    b_down: torch.Tensor  # (S, 1, m)
    w_up: torch.Tensor  # (S, m, d): W_upᵀ
    b_up: torch.Tensor  # (S, 1, d)
    scale: torch.Tensor | None  # (S, 1, d); None when every scaling is the number 1
    order: tuple[int, ...]  # order[s]: the adapter (index in the mix) in slot s
    activation: Any  # f
    dropout: Any


GroupKey = Callable[[Any, Any], "Hashable | None"]


def point_layers(modules: Sequence[Any], layer: int, site: str) -> list[Any]:
    """Each adapter's ``BottleneckLayer`` at ``(layer, site)``, read from the ``nn.ModuleDict`` entries directly
    (the hot path of a generation step: one lookup per adapter and point)."""
    key = str(layer)
    return [m._modules["layers"]._modules[key]._modules[site] for m in modules]


def _parts(layer: Any) -> tuple[list[torch.Tensor], float | None]:
    """``([W_downᵀ (d, m), b_down (m,), W_upᵀ (m, d), b_up (d,), scaling row (d,)], scaling as a number or None
    when it is a tensor)`` (Compacter's PHM projections compute ``weight`` / ``bias``)."""
    down, up = layer.down, layer.up
    b_up = up.bias
    scaling = layer.scaling
    if isinstance(scaling, torch.Tensor):
        row, number = scaling.to(b_up.dtype).expand(b_up.shape[-1]), None
    else:
        row, number = torch.full_like(b_up, float(scaling)), float(scaling)
    return [down.weight.t(), down.bias, up.weight.t(), b_up, row], number


def stacks(modules: Sequence[Any], layer: int, point: Point, group_key: GroupKey) -> Stacks | None:
    """The adapters' layers at ``point`` stacked by slot, or None when they cannot run as one computation:
    ``group_key(module, layer)`` must be the same for all and not None (the method's conditions: placement,
    width, activation, ...).

    Under a forward pass's plan (``grouped_weights.planned``) the slot stacks are kept in the caller's cache and
    an adapter is read (its layer found, its key taken, its weights copied) only when it is new to the stacks: the
    per-point work is comparing the kept keys. Otherwise every layer is checked and the weights stacked afresh, in
    the mix's order."""
    site = point[1]

    def fetch(k: int) -> tuple[list[torch.Tensor], tuple[Hashable, float | None]] | None:
        (found,) = point_layers([modules[k]], layer, site)
        key = group_key(modules[k], found)
        if key is None:
            return None
        parts, number = _parts(found)
        return parts, (key, number)

    got = grouped_weights.planned(("bottleneck.plan", layer, point), modules, fetch)
    if got is not None:
        (w_down, b_down, w_up, b_up, rows), order, infos = got
        keys, numbers = zip(*infos, strict=True)
        if len(set(keys)) != 1:
            return None
    else:
        layers = point_layers(modules, layer, site)
        keys = tuple(group_key(m, found) for m, found in zip(modules, layers, strict=True))
        if keys[0] is None or len(set(keys)) != 1:
            return None
        fetched = [_parts(found) for found in layers]
        w_down, b_down, w_up, b_up, rows = (torch.stack([f[0][j] for f in fetched]) for j in range(5))
        order, numbers = tuple(range(len(layers))), tuple(f[1] for f in fetched)
    scale = None if all(n == 1.0 for n in numbers) else rows.unsqueeze(1)  # (S, 1, d)
    (first,) = point_layers(modules[:1], layer, site)
    modules_of: Any = first._modules
    return Stacks(
        w_down,
        b_down.unsqueeze(1),
        w_up,
        b_up.unsqueeze(1),
        scale,
        order,
        modules_of["activation"],
        modules_of["dropout"],
    )


def _through(groups: torch.Tensor, st: Stacks) -> torch.Tensor:
    """``s ⊙ (f(groups W_downᵀ + b_down) W_upᵀ + b_up)`` per slot: ``(S, rows, d) -> (S, rows, d)``."""
    z = st.activation(torch.baddbmm(st.b_down, groups, st.w_down))  # (S, rows, m)
    up = torch.baddbmm(st.b_up, z, st.w_up)  # (S, rows, d)
    if st.scale is not None:
        up = up * st.scale
    return st.dropout(up)  # type: ignore[no-any-return]


def batch_split_deltas(st: Stacks, x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """``δ`` of consecutive row blocks, ``(B, T, d) -> (B, T, d)``: rows ``[Σ_{j<k} sizes_j, Σ_{j≤k} sizes_j)``
    through adapter ``k`` (slot ``s`` of ``st`` holds adapter ``st.order[s]``; ``sum(sizes) == B``). Equal sizes:
    the blocks viewed as ``(K, rows·T, d)``, taken in slot order; otherwise every row gets its adapter's slot of
    the stacks (gathered: ``(B, d, m)``, ...) and one matmul per row runs in a batch."""
    d, k = x.shape[-1], len(st.order)
    if len(set(sizes)) == 1:
        groups = x.reshape(k, -1, d)  # (K, rows·T, d): block k holds adapter k's rows
        if st.order == tuple(range(k)):
            return _through(groups, st).reshape(x.shape)
        out = _through(
            groups[grouped_weights.order_index(st.order, x.device)], st
        )  # (S, rows·T, d): slot s holds block order[s]
        return out[grouped_weights.order_index(grouped_weights.slot_inverse(st.order), x.device)].reshape(
            x.shape
        )  # blocks back in the mix's order
    rows = _select(st, _row_slots(st.order, tuple(sizes), x.device))  # each row's slot: (B, d, m), ...
    return _through(x.reshape(x.shape[0], -1, d), rows).reshape(x.shape)


def split_deltas(st: Stacks, x: torch.Tensor, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``δ`` of every position of ``x`` ``(B, T, d) -> (B, T, d)``: positions ``bounds[k]`` (non-empty, disjoint)
    through adapter ``k`` (slot ``s`` of ``st`` holds adapter ``st.order[s]``), 0 at positions in no slice."""
    batch, length, d = x.shape
    slots = tuple(bounds[k] for k in st.order)  # the slices in slot order
    lengths = {e - s for s, e in slots}
    k = len(slots)
    if len(lengths) == 1:
        (n,) = lengths
        if length == k * n and all(s == i * n for i, (s, _) in enumerate(slots)):  # end to end in slot order
            groups = x.reshape(batch, k, n, d).transpose(0, 1).reshape(k, batch * n, d)  # (S, B·n, d)
            out = _through(groups, st)  # (S, B·n, d)
            return out.reshape(k, batch, n, d).transpose(0, 1).reshape(batch, length, d)
        index = _positions(slots, n, x.device)  # (S·n,)
        groups = x[:, index].reshape(batch, k, n, d).transpose(0, 1).reshape(k, batch * n, d)  # (S, B·n, d)
        out = _through(groups, st)  # (S, B·n, d)
        out = out.reshape(k, batch, n, d).transpose(0, 1).reshape(batch, k * n, d)  # (B, S·n, d)
        return x.new_zeros(x.shape).index_copy_(1, index, out)
    widest = max(lengths)
    covered = sum(e - s for s, e in slots)
    delta = x.new_zeros(x.shape)  # (B, T, d)
    if batch * (k * widest - covered) <= _SLICE_ROWS * k:
        padded, keep, target = _padded(slots, widest, x.device)  # (S·L,), (covered,), (covered,)
        groups = x[:, padded].reshape(batch, k, widest, d).transpose(0, 1).reshape(k, batch * widest, d)
        out = _through(groups, st)  # (S, B·L, d)
        out = out.reshape(k, batch, widest, d).transpose(0, 1).reshape(batch, k * widest, d)  # (B, S·L, d)
        return delta.index_copy_(1, target, out[:, keep])
    for slot, (start, end) in enumerate(slots):
        part = x[:, start:end].reshape(1, -1, d)  # (1, B·n_k, d)
        out = _through(part, _select(st, slice(slot, slot + 1)))  # (1, B·n_k, d)
        delta[:, start:end] = out.reshape(batch, end - start, d)
    return delta


def _select(st: Stacks, index: torch.Tensor | slice) -> Stacks:
    """``st`` with every stacked tensor indexed along its slot axis by ``index`` (a tensor of slots: one entry per
    row of a batched matmul; a slice: some slots as they are)."""
    return st._replace(
        w_down=st.w_down[index],  # (G, d, m)
        b_down=st.b_down[index],  # (G, 1, m)
        w_up=st.w_up[index],  # (G, m, d)
        b_up=st.b_up[index],  # (G, 1, d)
        scale=None if st.scale is None else st.scale[index],  # (G, 1, d)
    )


def keep_base(out: torch.Tensor, inputs: Any, bounds: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``out`` ``(B, T, d)`` at the positions inside ``bounds``, ``inputs.base()`` (the point's value with no
    adapter) at the others; ``out`` itself when the bounds cover every position."""
    mask = _covered(tuple(bounds), inputs.length(), out.device)  # (T, 1) or None
    return out if mask is None else torch.where(mask, out, inputs.base())


@lru_cache(maxsize=256)
def _covered(bounds: tuple[tuple[int, int], ...], length: int, device: torch.device) -> torch.Tensor | None:
    """``(T, 1)``: True at positions inside a bound; None when they all are (memoised; only read; decided in Python,
    not from a tensor's value, so that torch.compile traces it in one graph)."""
    inside = [False] * length
    for start, end in bounds:
        inside[start:end] = [True] * (end - start)
    return None if all(inside) else torch.tensor(inside, device=device).unsqueeze(-1)


@lru_cache(maxsize=256)
def _positions(slots: tuple[tuple[int, int], ...], n: int, device: torch.device) -> torch.Tensor:
    """``(S·n,)``: the positions of the slices one after the other (memoised; only read)."""
    return torch.cat([torch.arange(s, s + n) for s, _ in slots]).to(device)


@lru_cache(maxsize=256)
def _padded(
    slots: tuple[tuple[int, int], ...], widest: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(padded (S·L,), keep (Σ n_k,), target (Σ n_k,))``: each slice's positions padded to ``L`` by repeating its
    first one; which entries of the padded layout are real; the positions they belong to (memoised; only read)."""
    padded, keep, target = [], [], []
    for slot, (start, end) in enumerate(slots):
        n = end - start
        padded.append(torch.cat([torch.arange(start, end), torch.full((widest - n,), start)]))
        keep.append(torch.arange(slot * widest, slot * widest + n))
        target.append(torch.arange(start, end))
    return torch.cat(padded).to(device), torch.cat(keep).to(device), torch.cat(target).to(device)


@lru_cache(maxsize=256)
def _row_slots(order: tuple[int, ...], sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(B,)``: the slot of each row's adapter (``sizes[k]`` rows of block ``k``, in order; memoised, only read)."""
    return torch.repeat_interleave(torch.tensor(grouped_weights.slot_inverse(order)), torch.tensor(sizes)).to(
        device
    )

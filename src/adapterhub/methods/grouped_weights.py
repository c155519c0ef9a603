"""Grouped adapter weights kept between forward passes by their caller: ``WeightCache``.

A grouped computation (several adapters at one point in one matmul: ``LoRAAdapter.batch_split_grouped`` /
``split_grouped``) first joins the adapters' weights (``torch.cat`` / ``torch.stack``), a copy at every point of every
forward. A caller that runs the same mix step after step (the generation engine) owns a ``WeightCache`` and enters
:func:`caching` around its forward passes; a method asks :func:`cached` for the joined weights of ``key`` (its own
tag, the layer and the point) built from ``sources`` (the tensors it joins, in order). The cache keeps ONE entry per
key and reuses it while every source is the same tensor (held weakly) with the same version counter and storage
(an in-place write, ``copy_``, an optimizer step or a reload bumps or replaces them) and the count is unchanged; a
new mix, a changed weight, a deleted or reloaded adapter rebuilds it. Nothing is cached while gradients are on (the
joined tensor would carry a stale graph), nor outside :func:`caching`: the cache is per caller, entered per call in
the thread or task that runs the forward (a context variable), never stored on the model or its adapters.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar

import torch

T = TypeVar("T")
_CURRENT: ContextVar[WeightCache | None] = ContextVar("adapterhub_grouped_weights", default=None)


def _stamp(sources: Sequence[torch.Tensor]) -> tuple[tuple[int, int, int], ...]:
    return tuple((id(t), t._version, t.data_ptr()) for t in sources)


class WeightCache:
    """One entry per key: ``(stamp, weak references to the sources, value)`` (see the module docstring). Not
    thread-safe: one caller's forward passes at a time (the engine runs one step at a time)."""

    def __init__(self) -> None:
        self._entries: dict[
            Any, tuple[tuple[tuple[int, int, int], ...], list[weakref.ref[torch.Tensor]], Any]
        ] = {}
        self.hits = 0
        self.builds = 0

    def get(self, key: Any, sources: Sequence[torch.Tensor], build: Callable[[], T]) -> T:
        stamp = _stamp(sources)
        entry = self._entries.get(key)
        if (
            entry is not None
            and entry[0] == stamp
            and all(r() is t for r, t in zip(entry[1], sources, strict=True))
        ):
            self.hits += 1
            return entry[2]  # type: ignore[no-any-return]
        value = build()
        self.builds += 1
        self._entries[key] = (stamp, [weakref.ref(t) for t in sources], value)
        return value

    def clear(self) -> None:
        self._entries.clear()


@contextlib.contextmanager
def caching(cache: WeightCache) -> Iterator[None]:
    """Forward passes of the block, in this thread or task, reuse ``cache``'s joined weights."""
    token = _CURRENT.set(cache)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def cached(key: Any, sources: Sequence[torch.Tensor], build: Callable[[], T]) -> T:
    """``build()``, reused from the caller's cache (:func:`caching`) while ``sources`` are unchanged."""
    cache = _CURRENT.get()
    if cache is None or torch.is_grad_enabled():
        return build()
    return cache.get(key, sources, build)

"""Grouped adapter weights kept between forward passes by their caller: ``WeightCache``.

A grouped computation (several adapters at one point in one batched matmul: ``LoRAAdapter.batch_split_grouped`` /
``split_grouped``, the bottleneck methods' likewise) first stacks the adapters' weights, a copy at every point of
every forward. A caller that runs the same mix step after step (the generation engine) owns a ``WeightCache`` and
enters :func:`caching` around its forward passes: the cache is per caller, entered per call in the thread or task
that runs the forward (a context variable), never stored on the model or its adapters.

:func:`planned` keeps slot stacks, one slot per adapter of the mix, under a forward pass's plan (``grouped_plan``):
the model's hooks call :func:`begin_pass` / :func:`end_pass` around each forward pass, and a plan runs only under
:func:`caching` with gradients off (a kept stack would carry a stale graph) and never while torch.compile /
torch.export trace. An adapter is named by its ``(id, generation)`` key, checked once per pass (an in-place write,
``copy_``, an optimizer step, a reload, a deleted and re-added adapter give a new generation), so a point only
looks up which slot holds each adapter: the held ones stay where they are (the caller learns the slot order), a
new one is copied into a free slot; a mix of another size keeps the held adapters (the stacks are the first K
slots of a kept capacity; a held adapter past them is copied slot to slot) and copies only the new ones. Without
a plan there are no kept stacks: the caller stacks afresh, in the mix's order.

:func:`joined` keeps one value per key under the plan the same way (LoRA's side-by-side factors of unequal
ranks): reused while the mix's keys are the same, built afresh otherwise. One validity rule serves both: the
adapter's generation; nothing is compared tensor by tensor at a point.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, TypeVar

import torch

from adapterhub.methods import grouped_plan

T = TypeVar("T")
_CURRENT: ContextVar[WeightCache | None] = ContextVar("adapterhub_grouped_weights", default=None)


class WeightCache:
    """A caller's kept grouped weights: per key (a method's tag, the layer and the point) the slot stacks of
    :func:`planned` or the value of :func:`joined`, and the adapters' generations (``grouped_plan.Generations``);
    counters of what was reused (``hits``), built whole, copied into a slot, resized or moved (see the module
    docstring). Not thread-safe: one caller's forward passes at a time (the engine runs one step at a time)."""

    def __init__(self) -> None:
        self._joined: dict[Any, tuple[tuple[grouped_plan.Key, ...], Any]] = {}  # ``joined``
        self._planned: dict[Any, _PlannedSlots] = {}  # ``planned``
        self.generations = grouped_plan.Generations()
        self.hits = 0
        self.builds = 0
        self.copies = 0  # groups copied into a slot of kept stacks
        self.resizes = 0  # kept stacks carried over to a mix of another size
        self.moves = 0  # held groups copied slot to slot into the first K slots

    def joined(self, key: Any, keys: tuple[grouped_plan.Key, ...], build: Callable[[], T]) -> T:
        """See :func:`joined`: the kept value while the mix's keys are the same."""
        entry = self._joined.get(key)
        if entry is not None and entry[0] == keys:
            self.hits += 1
            return entry[1]  # type: ignore[no-any-return]
        value = build()
        self.builds += 1
        self._joined[key] = (keys, value)
        return value

    def planned(
        self,
        key: Any,
        keys: tuple[grouped_plan.Key, ...],
        fetch: Callable[[int], tuple[Sequence[torch.Tensor], Any] | None],
    ) -> tuple[list[torch.Tensor], tuple[int, ...], list[Any]] | None:
        """See :func:`planned`. The stacks are the first ``K`` slots of ``capacity`` kept ones (views): a mix of
        another size moves the held adapters it still has into the first ``K`` slots (a slot-to-slot copy each)."""
        entry = self._planned.get(key)
        if entry is None:
            return self._build_planned(key, keys, fetch)
        size = len(keys)
        if size != entry.size:
            entry.resize(size)
            self.resizes += 1
        order = [-1] * size  # slot -> group
        missing: list[int] = []
        moved: dict[int, int] = {}  # source slot -> group
        where = entry.where
        for k, name in enumerate(keys):
            slot = where.get(name)
            if slot is not None and slot < size and order[slot] < 0:
                order[slot] = k
            elif slot is not None and slot >= size and slot not in moved:
                moved[slot] = k  # held past the first K slots: copied within the stacks
            else:
                missing.append(k)
        if not missing and not moved:
            self.hits += 1
            return entry.stacks, tuple(order), entry.infos[:size]
        free = iter([slot for slot, k in enumerate(order) if k < 0])
        for source, k in moved.items():
            slot = next(free)
            for full in entry.full:
                full[slot].copy_(full[source])
            entry.put(slot, keys[k], entry.infos[source])
            entry.forget(source)
            order[slot] = k
            self.moves += 1
        for k in missing:
            got = fetch(k)
            if got is None:
                return None
            parts, info = got
            if any(
                p.shape != s.shape[1:] or p.dtype != s.dtype for p, s in zip(parts, entry.full, strict=True)
            ):
                return self._build_planned(key, keys, fetch)  # another shape: start again
            slot = next(free)
            for full, part in zip(entry.full, parts, strict=True):
                full[slot].copy_(part)
            entry.put(slot, keys[k], info)
            order[slot] = k
            self.copies += 1
        return entry.stacks, tuple(order), entry.infos[:size]

    def _build_planned(
        self,
        key: Any,
        keys: tuple[grouped_plan.Key, ...],
        fetch: Callable[[int], tuple[Sequence[torch.Tensor], Any] | None],
    ) -> tuple[list[torch.Tensor], tuple[int, ...], list[Any]] | None:
        fetched = [fetch(k) for k in range(len(keys))]
        if any(got is None for got in fetched):
            return None
        parts = [got[0] for got in fetched if got is not None]
        infos = [got[1] for got in fetched if got is not None]
        if any(
            p.shape != q.shape or p.dtype != q.dtype
            for part in parts
            for p, q in zip(part, parts[0], strict=True)
        ):
            return None  # groups of other shapes (ranks): not one stack
        entry = self._planned[key] = _PlannedSlots(_stack(parts), list(keys), infos)
        self.builds += 1
        return entry.stacks, tuple(range(len(keys))), infos

    def clear(self) -> None:
        self._joined.clear()
        self._planned.clear()
        self.generations.clear()


class _PlannedSlots:
    """Kept stacks under a plan: ``full[j][s]`` holds part ``j`` of the group in slot ``s`` (``capacity`` slots),
    ``keys[s]`` its adapter's plan key (a negative generation: an empty slot), ``infos[s]`` what its caller keeps
    of it, ``where``: key -> slot; ``stacks``: the first ``size`` slots of each (views), the current mix's."""

    __slots__ = ("full", "infos", "keys", "size", "stacks", "where")

    def __init__(self, full: list[torch.Tensor], keys: list[grouped_plan.Key], infos: list[Any]) -> None:
        self.full, self.keys, self.infos = full, keys, infos
        self.where = {name: slot for slot, name in enumerate(keys)}
        self.size = len(keys)
        self.stacks = full

    def resize(self, size: int) -> None:
        """Make the first ``size`` slots the stacks, growing the capacity (by half, at least to ``size``; the held
        slots copied once) when it is short."""
        capacity = len(self.keys)
        if size > capacity:
            grown = max(size, capacity + capacity // 2)
            full = []
            for stack in self.full:
                new = stack.new_empty((grown, *stack.shape[1:]))  # (C', *shape): the new slots empty
                new[:capacity] = stack
                full.append(new)
            self.full = full
            self.keys += [(0, -1 - slot) for slot in range(capacity, grown)]
            self.infos += [None] * (grown - capacity)
        self.size = size
        self.stacks = [stack[:size] for stack in self.full]  # (K, *shape) views

    def put(self, slot: int, name: grouped_plan.Key, info: Any) -> None:
        """Slot ``slot`` now holds the adapter ``name``."""
        self.forget(slot)
        self.keys[slot], self.infos[slot] = name, info
        self.where[name] = slot

    def forget(self, slot: int) -> None:
        """Slot ``slot`` holds nothing any more."""
        old = self.keys[slot]
        if self.where.get(old) == slot:
            del self.where[old]
        self.keys[slot], self.infos[slot] = (0, -1 - slot), None


def _stack(parts: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """``[stack of every group's part j for each j]``: ``(K, *shape_j)`` each."""
    return [torch.stack([p[j] for p in parts]) for j in range(len(parts[0]))]


@contextlib.contextmanager
def caching(cache: WeightCache) -> Iterator[None]:
    """Forward passes of the block, in this thread or task, keep their grouped weights in ``cache`` (see the module
    docstring)."""
    token = _CURRENT.set(cache)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def begin_pass() -> None:
    """A forward pass starts (the model's first pre-hook): under :func:`caching` with gradients off, it gets a plan
    (``grouped_plan.Pass``) that :func:`planned` reads; otherwise none. Nothing while torch.compile / torch.export
    traces the model (a context variable cannot be traced; a traced pass runs without a plan)."""
    if torch.compiler.is_compiling():
        return
    cache = _CURRENT.get()
    grouped_plan.begin_pass(cache, cache.generations if cache is not None else None)


def end_pass() -> None:
    """The forward pass ends (the model's last hook): its plan is dropped (nothing while tracing, as above)."""
    if torch.compiler.is_compiling():
        return
    grouped_plan.end_pass()


def planned(
    key: Any,
    modules: Sequence[Any],
    fetch: Callable[[int], tuple[Sequence[torch.Tensor], Any] | None],
) -> tuple[list[torch.Tensor], tuple[int, ...], list[Any]] | None:
    """``(stacks, order, infos)``: ``stacks[j]`` ``(K, *shape_j)`` holds part ``j`` of the group in slot ``s`` (``order``
    is a permutation of ``range(K)``, ``order[s]`` the group in slot ``s``), for the groups of the adapter modules
    ``modules`` (group ``k``: ``fetch(k) = (parts, info)``, the prepared tensors of ``modules[k]`` at the point and
    what the caller keeps of it, e.g. its scale; ``infos[s]``: the info of the group in slot ``s``), when a forward
    pass's plan is running under the caller's cache (:func:`begin_pass`): a group is held while its adapter's
    generation is unchanged (checked once per pass), so only new groups are fetched. None without a running plan,
    when ``fetch`` gives None, or when the groups' parts differ in shape (the caller then takes another way)."""
    if torch.compiler.is_compiling():
        return None  # no plan while tracing (a context variable cannot be traced)
    cache = _CURRENT.get()
    if cache is None:
        return None
    run = grouped_plan.current(cache)
    if run is None:
        return None
    return cache.planned(key, run.keys_of(modules), fetch)


def joined(key: Any, modules: Sequence[Any], build: Callable[[], T]) -> T:
    """``build()``: a value made of the weights of the adapter modules ``modules`` at a point (LoRA's factors of
    unequal ranks side by side), kept in the caller's cache under ``key`` while a forward pass's plan runs and the
    mix's ``(id, generation)`` keys are the same (the same adapters, in order, none changed); built afresh
    otherwise and without a plan."""
    if torch.compiler.is_compiling():
        return build()  # no plan while tracing, as in :func:`planned`
    cache = _CURRENT.get()
    run = None if cache is None else grouped_plan.current(cache)
    if cache is None or run is None:
        return build()
    return cache.joined(key, run.keys_of(modules), build)


def slot_inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    """The inverse of a slot order (``order[s]``: the group in slot ``s``): ``out[order[s]] = s``, the slot of each
    group."""
    out = [0] * len(order)
    for slot, k in enumerate(order):
        out[k] = slot
    return tuple(out)


@lru_cache(maxsize=256)
def order_index(order: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``order`` as a long tensor on ``device`` (memoised; only read)."""
    return torch.tensor(order, dtype=torch.long, device=device)

"""A per-forward-pass plan for grouped adapter weights: each adapter of a mix is checked ONCE per forward pass,
not at every point.

``grouped_weights.slotted`` checks every source tensor of every adapter at every point (identity, version counter,
storage): a generation step of K adapters over P points makes ``K · P`` such checks. Under a plan, the model's first
pre-hook starts a :class:`Pass` (:func:`begin_pass`, a context variable: per call, in the thread or task running
the forward; :func:`end_pass` from its last hook) when the caller's ``WeightCache`` is active and gradients are off.
The first point of the pass that meets an adapter computes its *signature* (every submodule's identity, type,
``scaling``, dropout ``p``, ``embedding`` flag and training mode, and every parameter's identity, version counter and storage) and
compares it with the one the caller's :class:`Generations` holds: a change (an in-place write, ``copy_``, an
optimizer step, a reload, a replaced layer or parameter, a deleted and re-added adapter) gives the adapter a new
*generation* number. A mix is then the tuple of its adapters' ``(id, generation)`` keys, computed once per pass,
and a point's kept stacks are valid for a key exactly when the key is the same: the per-point work is one lookup
per adapter (which slot holds it), with no tensor checks.

Exactness: within one forward pass no weight changes between points (the signature is taken at the pass's first
use of the adapter); between passes every change a ``WeightCache`` saw (see ``grouped_weights``) is seen here too.
The objects whose identities a signature records are held strongly while it is kept, so an identity is never reused
by another object; an adapter module itself is held weakly and its entry dropped once it is gone.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

Key = tuple[int, int]  # (id of the adapter module, its generation)


class Generations:
    """Per caller (inside its ``WeightCache``): each adapter module's last signature and generation number."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref[nn.Module], tuple[Any, ...], list[Any], int]] = {}
        self._counter = 0

    def generation(self, module: nn.Module) -> int:
        """The adapter's generation: unchanged while its signature is (see the module docstring)."""
        signature, held = _signature(module)
        entry = self._entries.get(id(module))
        if entry is not None and entry[0]() is module and entry[1] == signature:
            return entry[3]
        self._counter += 1
        self._entries = {
            k: e for k, e in self._entries.items() if e[0]() is not None
        }  # forget deleted adapters
        self._entries[id(module)] = (weakref.ref(module), signature, held, self._counter)
        return self._counter

    def clear(self) -> None:
        self._entries.clear()


def _signature(module: nn.Module) -> tuple[tuple[Any, ...], list[Any]]:
    """``(signature, held)``: what a grouped computation reads of the adapter (see the module docstring) and the
    objects whose identities it records. Read from the modules' ``__dict__`` (no ``nn.Module`` attribute lookups:
    this runs once per adapter and pass over every submodule)."""
    parts: list[Any] = []
    held: list[Any] = []
    todo: list[Any] = [module]
    while todo:
        sub = todo.pop()
        state = sub.__dict__
        scaling = state.get("scaling")
        if not (scaling is None or type(scaling) in (int, float)):
            held.append(scaling)
            scaling = id(scaling)
        parts.append((id(sub), type(sub), scaling, state.get("p"), state.get("embedding"), state["training"]))
        if sub is not module:  # the adapter itself is held weakly (``Generations``)
            held.append(sub)
        for t in state["_parameters"].values():
            if t is not None:
                parts.append((id(t), t._version, t.data_ptr()))
                held.append(t)
        todo.extend(child for child in state["_modules"].values() if child is not None)
    return tuple(parts), held


class Pass:
    """One forward pass under a caller's cache: the adapters' generations and the mixes' keys, each computed once."""

    __slots__ = ("cache", "generations", "keys", "known")

    def __init__(self, cache: Any, generations: Generations) -> None:
        self.cache = cache
        self.generations = generations
        self.keys: dict[tuple[int, ...], tuple[Key, ...]] = {}
        self.known: dict[int, Key] = {}  # id of an adapter module -> its key in this pass

    def keys_of(self, modules: Sequence[nn.Module]) -> tuple[Key, ...]:
        """The mix's ``(id, generation)`` keys, in its order (memoised for the pass)."""
        mix = tuple(map(id, modules))
        keys = self.keys.get(mix)
        if keys is None:
            known = self.known
            for m in modules:
                if id(m) not in known:
                    known[id(m)] = (id(m), self.generations.generation(m))
            keys = self.keys[mix] = tuple(known[i] for i in mix)
        return keys


_PASS: ContextVar[Pass | None] = ContextVar("adapterhub_grouped_pass", default=None)


def begin_pass(cache: Any, generations: Generations | None) -> None:
    """Start the plan of a forward pass (the model's first pre-hook) under ``cache`` (the caller's active
    ``WeightCache``, or None: no plan)."""
    if cache is not None and generations is not None and not torch.is_grad_enabled():
        _PASS.set(Pass(cache, generations))
    else:
        _PASS.set(None)


def end_pass() -> None:
    """End the forward pass's plan (the model's last hook)."""
    if _PASS.get() is not None:
        _PASS.set(None)


def current(cache: Any) -> Pass | None:
    """The running pass, when it belongs to ``cache`` (the active ``WeightCache``) and gradients are off."""
    p = _PASS.get()
    if p is None or p.cache is not cache or torch.is_grad_enabled():
        return None
    return p

"""A per-forward-pass plan for grouped adapter weights: each adapter of a mix is checked ONCE per forward pass,
not at every point.

Checking every weight tensor of every adapter at every point (identity, version counter, storage) would make
``K · P`` checks for a generation step of K adapters over P points. Under a plan, the model's first pre-hook starts
a :class:`Pass` (:func:`begin_pass`, a context variable: per call, in the thread or task running the forward;
:func:`end_pass` from its last hook) when the caller's ``WeightCache`` is active and gradients are off. The first
point of the pass that meets an adapter computes its *signature* (every submodule's identity, type, ``scaling``,
dropout ``p``, ``embedding`` flag and training mode, and every parameter's identity, version counter and storage)
and compares it with the one the caller's :class:`Generations` holds: a change (an in-place write, ``copy_``, an
optimizer step, a reload, a replaced layer or parameter, a deleted and re-added adapter) gives the adapter a new
*generation* number. The adapter's submodules are walked once and kept (its *skeleton*); each pass reads the
signature from them with C-level maps, and walks again when a submodule's children changed. A mix is then the
tuple of its adapters' ``(id, generation)`` keys, computed once per pass, and a point's kept stacks
(``grouped_weights.planned``) are valid for a key exactly when the key is the same: the per-point work is one
lookup per adapter (which slot holds it), with no tensor checks.

Exactness: within one forward pass no weight changes between points (the signature is taken at the pass's first
use of the adapter); between passes every change to an adapter's parameters (in place or replaced), their storage,
its submodules or their settings gives a new generation.
The objects whose identities a signature records are held strongly while it is kept, so an identity is never reused
by another object; an adapter module itself is held weakly and its entry dropped once it is gone.
"""

from __future__ import annotations

import itertools
import operator
import weakref
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any, NamedTuple

import torch
from torch import nn

Key = tuple[int, int]  # (id of the adapter module, its generation)


class Generations:
    """Per caller (inside its ``WeightCache``): each adapter module's skeleton, last signature and generation."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._counter = 0

    def generation(self, module: nn.Module) -> int:
        """The adapter's generation: unchanged while its signature is (see the module docstring)."""
        entry = self._entries.get(id(module))
        if entry is not None and entry.ref() is module and entry.kind is type(module):
            signature, held = entry.skeleton.signature()
            if signature == entry.signature:
                return entry.generation
        skeleton = _Skeleton(module)
        signature, held = skeleton.signature()
        self._counter += 1
        self._entries = {
            k: e for k, e in self._entries.items() if e.ref() is not None
        }  # forget deleted adapters
        self._entries[id(module)] = _Entry(
            weakref.ref(module), type(module), skeleton, signature, held, self._counter
        )
        return self._counter

    def clear(self) -> None:
        self._entries.clear()


class _Entry(NamedTuple):
    ref: weakref.ref[nn.Module]
    kind: type
    skeleton: _Skeleton
    signature: tuple[Any, ...]
    held: list[torch.Tensor]  # the parameters whose identities the signature records
    generation: int


_PLAIN = frozenset({type(None), bool, int, float})
_TRAINING = operator.itemgetter("training")
_MODULES = operator.itemgetter("_modules")
_PARAMETERS = operator.itemgetter("_parameters")
_VERSION = operator.attrgetter("_version")


class _Skeleton:
    """An adapter's submodules (walked once, held: the adapter itself only through ``Generations``' weak
    reference) and their ``__dict__``s, from which :meth:`signature` reads everything with C-level maps (no
    ``nn.Module`` attribute lookups, no Python loop per submodule: it runs once per adapter and pass)."""

    __slots__ = ("children", "param_dicts", "states", "subs")

    def __init__(self, module: nn.Module) -> None:
        found: list[nn.Module] = []
        todo: list[nn.Module] = [module]
        while todo:
            sub = todo.pop()
            found.append(sub)
            todo.extend(child for child in sub.__dict__["_modules"].values() if child is not None)
        self.subs = found[1:]  # the submodules (held), the adapter's type checked by ``Generations``
        self.states: list[dict[str, Any]] = [sub.__dict__ for sub in found]
        self.children: list[dict[str, Any]] = list(map(_MODULES, self.states))
        self.param_dicts: list[dict[str, Any]] = list(map(_PARAMETERS, self.states))

    def signature(self) -> tuple[tuple[Any, ...], list[torch.Tensor]]:
        """``(signature, parameters)``: every submodule's type, training mode, ``scaling``, dropout ``p`` and
        ``embedding`` flag, its children and parameter containers (identities), and every parameter's identity,
        version counter and storage; a submodule's children that changed make the signature differ (the skeleton
        is then walked again)."""
        states = self.states
        params = [
            t for t in itertools.chain.from_iterable(map(dict.values, self.param_dicts)) if t is not None
        ]
        scalings = tuple(map(dict.get, states, itertools.repeat("scaling")))
        if not _PLAIN.issuperset(map(type, scalings)):
            # a tensor scale: by identity (held through its module)
            scalings = tuple(x if type(x) in _PLAIN else id(x) for x in scalings)
        signature = (
            tuple(map(type, self.subs)),
            tuple(map(_TRAINING, states)),
            scalings,
            tuple(map(dict.get, states, itertools.repeat("p"))),
            tuple(map(dict.get, states, itertools.repeat("embedding"))),
            tuple(map(id, map(_MODULES, states))),
            tuple(map(id, map(_PARAMETERS, states))),
            # the children themselves (modules compare by identity)
            tuple(map(tuple, map(dict.values, self.children))),
            tuple(map(id, params)),
            tuple(map(_VERSION, params)),
            tuple(map(torch.Tensor.data_ptr, params)),
        )
        return signature, params


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

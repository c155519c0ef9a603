"""``AdapterStore``: every adapter, head and fusion of one model, the active setup, and the entry point the hooks
call at each attachment point.

The store is an ``nn.Module`` attached to the model as ``model._adapterhub`` (so optimisers, ``.to()``, DDP and
state dicts see its parameters). It holds no per-call state (``adapterhub.runtime.callstate`` does): many threads may run
the same model at once, each with its own ``with model.adapter_setup(...)``. That per-call setup is a
``TracedContextVar``, which torch.compile (``fullgraph=True``) reads while tracing and guards on, per call and thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from adapterhub.methods.base import EMBEDDING, LINEAR, MODULE, AdapterModule, PointInputs
from adapterhub.runtime import callstate
from adapterhub.runtime.interpreter import PointRun, run_setup
from adapterhub.runtime.traced_context import TracedContextVar
from adapterhub.spec.composition import Setup, parallel_block, setup_names

STORE_ATTR = "_adapterhub"
Observer = Callable[[int, str, str, PointInputs], None]


class AdapterStore(nn.Module):
    """Holds every adapter, head and fusion of one model, and the active setup.

    ``merged``: names of adapters whose update is folded into the base weights (``merge_adapter``), each with the
    biases and embedding rows its merge overwrote (restored by ``unmerge_adapter``); the hooks
    leave them out, since the base weights already apply them. ``skip_layers`` (AdapterDrop): transformer layers
    whose attachment points keep their base value whatever the setup (embedding points are outside the layers and
    still run; a module point counts as the layer holding its module)."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.fusions = nn.ModuleDict()
        self.active_setup: Setup | None = None
        self.active_head_name: str | None = None
        self.merged: dict[str, Any] = {}
        self.original_class: type | None = None  # the model's class before adapterhub.init
        # AdapterDrop: the layers whose adapters do not run (model-level; a per-call override beside the setup's)
        self.skip_layers: frozenset[int] = frozenset()
        # the transformer layer of each module point's module (``("module", path)`` points report layer -1)
        self.module_layers: dict[str, int] = {}
        # per thread / task; a context variable torch.compile reads while tracing and guards on (``traced_context``)
        self._override: TracedContextVar[tuple[Setup | None, frozenset[int] | None] | None] = (
            TracedContextVar(f"adapterhub_setup_{id(self)}", None)
        )
        self._overrides_open = 0  # `with adapter_setup(...)` blocks open in any thread
        self._count_lock = threading.Lock()
        self._kinds: dict[Setup, frozenset[str]] = {}
        # per set of adapter names: whether any of them sits at (layer, kind, point) (``_sits_at``)
        self._names: dict[Setup, frozenset[str]] = {}
        self._sites: dict[frozenset[str], dict[tuple[int, str, str], bool]] = {}
        # per adapter name: whether it (not merged) sits at (layer, kind, point): a new set of names (the mix of a
        # serving step changes as sequences join and leave) asks each name once per point, not each adapter
        self._sites_of: dict[str, dict[tuple[int, str, str], bool]] = {}
        # ``observing``: a per-call function that sees the inputs of every linear / module point instead of adapters
        self._observer: TracedContextVar[Observer | None] = TracedContextVar(
            f"adapterhub_observer_{id(self)}", None
        )
        self._observers_open = 0

    @contextlib.contextmanager
    def observing(self, observer: Observer) -> Iterator[None]:
        """Within the block (in this thread / context), every hook of a linear or module point hands its inputs to
        ``observer(layer, kind, point, inputs)`` and no adapter runs anywhere: the model computes as its base (EVA's
        data pass, ``adapterhub.api.eva``)."""
        token = self._observer.set(observer)
        with self._count_lock:
            self._observers_open += 1
        try:
            yield
        finally:
            self._observer.reset(token)
            with self._count_lock:
                self._observers_open -= 1

    def _current_observer(self) -> Observer | None:
        # while torch.compile traces: the variable always, not the count of open blocks (which other threads change),
        # so that graphs are guarded on this call's variable only
        if self._observers_open or torch.compiler.is_compiling():
            return self._observer.get()
        return None

    # ---- called from the hooks
    def current_setup(self) -> Setup | None:
        """The setup of this call: this thread's / task's ``adapter_setup``, else the model's active setup. While
        torch.compile traces, the per-call variable is read always (not the count of open blocks, which other threads
        change): the graph is guarded on this call's value (``traced_context``), so a call under another setup, in
        any thread, runs another graph."""
        if not torch.compiler.is_compiling() and self._overrides_open == 0:  # fast path
            return self.active_setup
        override = self._override.get()
        return override[0] if override is not None else self.active_setup

    def current_skip(self) -> frozenset[int]:
        """The layers whose adapters this call leaves out (AdapterDrop): the per-call ``skip_layers`` given with
        ``adapter_setup``, else the model's."""
        if not torch.compiler.is_compiling() and self._overrides_open == 0:
            return self.skip_layers
        override = self._override.get()
        if override is None or override[1] is None:
            return self.skip_layers
        return override[1]

    def uses(self, kind: str) -> bool:
        """Whether an adapter of the current setup attaches at points of ``kind`` (hooks of other kinds return
        at once)."""
        if (self._observers_open or torch.compiler.is_compiling()) and self._current_observer() is not None:
            return kind in (LINEAR, MODULE)
        setup = self.current_setup()
        if setup is None:
            return False
        if torch.compiler.is_compiling():  # no memo while tracing (see ``_sits_at``)
            return kind in self._kinds_of(setup)
        kinds = self._kinds.get(setup)
        if kinds is None:
            kinds = self._kinds_of(setup)
            if len(self._kinds) >= 4096:  # setups differ by batch sizes in serving: keep the memo bounded
                self._kinds.clear()
            self._kinds[setup] = kinds
        return kind in kinds

    def _kinds_of(self, setup: Setup) -> frozenset[str]:
        adapters = self.adapters
        return frozenset(
            kind
            for name in setup_names(setup)
            if name in adapters and name not in self.merged
            for kind in adapters[name].kinds()  # type: ignore[operator]
        )

    def point_forward(self, layer: int, kind: str, point: str, inputs: PointInputs) -> torch.Tensor | None:
        """The value that replaces the output at ``(kind, point)`` of ``layer``, or None to leave it alone."""
        if self._observers_open or torch.compiler.is_compiling():
            observer = self._current_observer()
            if observer is not None:
                if kind in (LINEAR, MODULE):
                    observer(layer, kind, point, inputs)
                return None
        setup = self.current_setup()
        if setup is None:
            return None
        skip = self.current_skip()
        if skip:  # AdapterDrop: points inside a skipped layer keep their base value
            at = self.module_layers.get(point) if kind == MODULE else None if kind == EMBEDDING else layer
            if at is not None and at in skip:
                return None
        if not self._sits_at(setup, layer, kind, point):  # no adapter of the setup here: the base value
            return None
        state = callstate.current(self)
        if state is not None and state.positions is not None:
            inputs = inputs.at_positions(state.positions)
        run = PointRun(
            layer=layer,
            point=(kind, point),
            adapters=self.adapters,  # type: ignore[arg-type]
            fusions=self.fusions,  # type: ignore[arg-type]
            parallel_batch=state.parallel_batch if state is not None else None,
            merged=self.merged,
        )
        return run_setup(run, setup, inputs)

    def active_head(self) -> str | None:
        """The flexible head used for outputs: set explicitly, else the one named like the last active adapter;
        None under ``Parallel`` (one head per branch) or when no flexible head applies."""
        setup = self.current_setup()
        if parallel_block(setup) is not None:
            return None
        if self.active_head_name is not None:
            return self.active_head_name
        if setup is None:
            return None
        last = setup if isinstance(setup, str) else setup.last()
        return last if last in self.heads else None

    def needs_call_state(self) -> bool:
        """Whether a forward pass carries per-call state (a flexible head or Parallel may be in play, or an
        adapter reads the call's positions)."""
        return (
            len(self.heads) > 0 or parallel_block(self.current_setup()) is not None or self.reads_positions()
        )

    def reads_positions(self) -> bool:
        """Whether an active adapter intervenes on positions counted from the call's attention mask
        (``AdapterModule.reads_positions``): the call then records them (``callstate.CallState.positions``)."""
        setup = self.current_setup()
        if setup is None:
            return False
        adapters = self.adapters
        return any(
            name in adapters and adapters[name].reads_positions  # type: ignore[union-attr]
            for name in setup_names(setup)
        )

    def _sits_at(self, setup: Setup, layer: int, kind: str, point: str) -> bool:
        """Whether an adapter named in ``setup`` (not merged) sits at the point: where none does, every block of
        the interpreter gives the base value, so the hook returns at once. Memoised per set of names (a packed or
        BatchSplit setup differs step by step in its sizes only) and per name (a new mix asks each of its names once per
        point, not each adapter module), forgotten by ``changed()``; a name the model
        lacks answers True, so that the interpreter raises its error. While torch.compile traces, asked afresh: a
        graph that read the memos would be guarded on their contents, which grow with every new setup (each growth
        would recompile every graph)."""
        if torch.compiler.is_compiling():
            adapters = self.adapters
            names_now = setup_names(setup)
            return any(name not in adapters for name in names_now) or any(
                self._name_sits_at(adapters, name, layer, kind, point) for name in names_now
            )
        names = self._names.get(setup)
        if names is None:
            names = frozenset(setup_names(setup))
            if len(self._names) >= 4096:  # setups differ by batch sizes in serving: keep the memo bounded
                self._names.clear()
            self._names[setup] = names
        sites = self._sites.get(names)
        if sites is None:
            if len(self._sites) >= 1024:
                self._sites.clear()
            sites = self._sites[names] = {}
        key = (layer, kind, point)
        found = sites.get(key)
        if found is None:
            adapters = self.adapters
            if any(name not in adapters for name in names):
                return True
            found = False
            for name in names:
                of = self._sites_of.get(name)
                if of is None:
                    of = self._sites_of[name] = {}
                at = of.get(key)
                if at is None:
                    at = of[key] = self._name_sits_at(adapters, name, layer, kind, point)
                if at:
                    found = True
                    break
            sites[key] = found
        return found

    def _name_sits_at(self, adapters: Any, name: str, layer: int, kind: str, point: str) -> bool:
        """Whether adapter ``name`` of ``adapters`` (the store's, looked up once by the caller) is unmerged and sits at
        the point."""
        return name not in self.merged and bool(adapters[name].present(layer, kind, point))

    def changed(self) -> None:
        """Adapters were added, deleted, merged or unmerged: forget what was derived from them."""
        self._kinds.clear()
        self._names.clear()
        self._sites.clear()
        self._sites_of.clear()

    def adapter_modules(self) -> dict[str, AdapterModule]:
        return dict(self.adapters.items())  # type: ignore[arg-type]

    # ---- copying and pickling
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        for transient in ("_override", "_observer", "_count_lock"):
            state.pop(transient, None)
        state["_overrides_open"] = 0
        state["_observers_open"] = 0
        state["_kinds"] = {}
        state["_names"] = {}
        state["_sites"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._override = TracedContextVar(f"adapterhub_setup_{id(self)}", None)
        self._observer = TracedContextVar(f"adapterhub_observer_{id(self)}", None)
        self._observers_open = getattr(self, "_observers_open", 0)  # stores pickled before observing existed
        self._count_lock = threading.Lock()

    @contextlib.contextmanager
    def override(self, setup: Setup | None, skip: frozenset[int] | None = None) -> Iterator[None]:
        """``setup`` (and, unless None, ``skip`` as the skipped layers) for this thread / task inside the block."""
        token = self._override.set((setup, skip))
        with self._count_lock:
            self._overrides_open += 1
        try:
            yield
        finally:
            self._override.reset(token)
            with self._count_lock:
                self._overrides_open -= 1

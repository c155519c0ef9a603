"""``TracedContextVar``: a context variable that ``torch.compile`` (fullgraph) can read while it traces, with the
compiled graph guarded on the value each call sees.

Per-call state (``model.adapter_setup(...)``) lives in a context variable so that threads and async tasks sharing one
model each see their own. Dynamo cannot trace ``ContextVar.get`` (a graph break, an error under ``fullgraph=True``).
It does read attributes whose descriptor is a property with a C getter without tracing into them (it treats them as
free of side effects), and it guards on the value through the same attribute, so the guard re-reads the attribute in
the caller's thread and context before each compiled call. ``TracedContextVar`` exposes its variable that way: a
reader object whose class has ``value = property(var.get)``. ``var.get`` is the variable's own C method; as a getter
it is called as ``var.get(reader)``, so an unset variable answers the reader itself (the ``default`` argument of
``ContextVar.get``). Set values are kept wrapped in a 1-tuple, so that an unset variable (the reader) and any set
value (``None`` included) are told apart by ``isinstance(..., tuple)``, which dynamo traces.

What the guards give: a graph traced while one thread's variable held ``x`` runs only for calls whose variable holds
an equal value (constants: equality; other objects as dynamo guards them); any other value recompiles (or, past
dynamo's recompile limit, runs eagerly), so two threads calling one compiled model under different values each get
their own graph's result.
"""

from __future__ import annotations

import contextvars
from typing import Generic, TypeVar

T = TypeVar("T")


class TracedContextVar(Generic[T]):
    """A context variable (``get`` / ``set`` / ``reset`` as ``contextvars.ContextVar``) that torch.compile traces:
    see the module docstring. ``default``: what ``get`` answers where the variable is unset in this context."""

    def __init__(self, name: str, default: T) -> None:
        self.name = name
        self.default = default
        self._var: contextvars.ContextVar[tuple[T]] = contextvars.ContextVar(name)
        # a class per variable: its property's getter is this variable's C ``get`` (dynamo reads it, never traces it)
        reader_class = type("ContextReader", (), {"__slots__": (), "value": property(self._var.get)})
        self._reader = reader_class()

    def get(self) -> T:
        """The value set in this thread / task, else ``default``."""
        held = self._reader.value  # ``(value,)`` when set, else the reader itself
        if isinstance(held, tuple):
            return held[0]  # type: ignore[no-any-return]
        return self.default

    def set(self, value: T) -> contextvars.Token[tuple[T]]:
        """Set the value for this thread / task; ``reset(token)`` puts back what was there."""
        return self._var.set((value,))

    def reset(self, token: contextvars.Token[tuple[T]]) -> None:
        self._var.reset(token)

    def __reduce__(self) -> tuple[type[TracedContextVar[T]], tuple[str, T]]:
        """Copies (``copy.deepcopy``, pickling) are fresh variables, unset: values are per thread, not per object."""
        return (TracedContextVar, (self.name, self.default))

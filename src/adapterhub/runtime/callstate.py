"""Per-call state: what one forward pass of a model carries from one hook to the next.

Hooks are installed once per model and shared by every thread that calls it (servers share one model). What a
call hands from its pre-hooks to its later hooks (the head's targets, the base model's output, the Parallel batch)
therefore lives here, in a ``CallState`` kept per thread and per model, never on the model or the adapter store.
A forward pass runs in one thread from its first hook to its last, so per thread is per call; the first model
pre-hook of a call starts a fresh state (dropping one a failed call may have left) and the last hook ends it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from adapterhub.methods.point_inputs import CallPositions

_LOCAL = threading.local()


@dataclass
class CallState:
    """``labels``: the active flexible head's targets taken out of the call; ``head_inputs``: further keywords a
    head consumes (e.g. a choice mask); ``num_choices`` / ``logits_to_keep``: multiple-choice flattening and
    ``generate()``'s request; ``base_output``: the base model's output; ``parallel_batch`` / ``parallel_first``:
    under ``Parallel``, the batch size before replication and the first layer that replicates;
    ``parallel_labels`` / ``parallel_choice_mask``: what was taken away from the model's own head under
    ``Parallel`` for the branches' heads; ``positions``: the call's attention mask and cache length, recorded when
    an active adapter intervenes on positions counted from it (ReFT)."""

    labels: dict[str, Any] | None = None
    head_inputs: dict[str, Any] = field(default_factory=dict)
    num_choices: int | None = None
    logits_to_keep: Any = None
    base_output: Any = None
    parallel_batch: int | None = None
    parallel_branches: int | None = None
    parallel_first: int = 0
    parallel_labels: Any = None
    parallel_choice_mask: Any = None
    positions: CallPositions | None = None


def _states() -> dict[int, CallState]:
    states: dict[int, CallState] | None = getattr(_LOCAL, "states", None)
    if states is None:
        states = _LOCAL.states = {}
    return states


def begin(owner: object) -> CallState:
    """Start the state of a new call of ``owner``'s model in this thread."""
    state = CallState()
    _states()[id(owner)] = state
    return state


def current(owner: object) -> CallState | None:
    """This thread's state of the call of ``owner``'s model in progress, if any."""
    states: dict[int, CallState] | None = getattr(_LOCAL, "states", None)
    return None if states is None else states.get(id(owner))


def end(owner: object) -> CallState | None:
    """End (and return) the state of ``owner``'s call in this thread."""
    states: dict[int, CallState] | None = getattr(_LOCAL, "states", None)
    return None if states is None else states.pop(id(owner), None)


@contextlib.contextmanager
def resumed(owner: object, state: CallState | None) -> Iterator[None]:
    """Make ``state`` this thread's state of ``owner``'s call for the block, and put back what was there before.

    Activation checkpointing re-runs a layer's forward during ``backward()``, after the call that ran it first has
    ended (and possibly in autograd's own thread): the recompute must see the state of that call."""
    states = _states()
    key = id(owner)
    before = states.get(key)
    if state is None:
        states.pop(key, None)
    else:
        states[key] = state
    try:
        yield
    finally:
        if before is None:
            states.pop(key, None)
        else:
            states[key] = before


@contextlib.contextmanager
def given_positions(owner: object, positions: CallPositions | None) -> Iterator[None]:
    """Calls of ``owner``'s model in this thread within the block take ``positions`` as their positions instead of
    reading them from the call's arguments (``call_positions``): a caller whose rows are different sequences (the
    generation engine's step, with a 4-D mask) says where each row's tokens are. ``None``: no change."""
    if positions is None:
        yield
        return
    given: dict[int, CallPositions] | None = getattr(_LOCAL, "given", None)
    if given is None:
        given = _LOCAL.given = {}
    key = id(owner)
    before = given.get(key)
    given[key] = positions
    try:
        yield
    finally:
        if before is None:
            given.pop(key, None)
        else:
            given[key] = before


def call_positions(owner: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallPositions:
    """The positions of a call of ``owner``'s model: those given for this thread (``given_positions``), else its 2D
    ``attention_mask`` ``(batch, past + seq)`` (keyword, or the second positional argument as transformers models
    take it), and how many positions its key/value cache already holds (``past_key_values.get_seq_length()``,
    else 0)."""
    given: dict[int, CallPositions] | None = getattr(_LOCAL, "given", None)
    if given is not None and id(owner) in given:
        return given[id(owner)]
    mask = kwargs["attention_mask"] if "attention_mask" in kwargs else (args[1] if len(args) > 1 else None)
    cache = kwargs.get("past_key_values")
    length = getattr(cache, "get_seq_length", None)
    past = int(length()) if callable(length) else 0
    return CallPositions(mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None, past)

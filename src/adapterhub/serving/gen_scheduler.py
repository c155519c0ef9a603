"""The generation engine's iteration-level scheduler: which sequences run in the next step.

Every step runs all running sequences (one new token each: decode) and admits waiting requests (their whole prompt:
prefill) while all three bounds hold: at most ``max_num_seqs`` running, at most ``max_batch_tokens`` new tokens in
the step, and the request's cache reservation (prompt + max new tokens) fits the ``CacheBudget``.

Admission is fair between adapters: every adapter (the base model alone and each composition count as one) has
its own first-come-first-served queue, and admission takes the head of each queue in turn (round robin; an
adapter whose request was just admitted goes to the back of the turn order). So a flood of one adapter's requests
delays another adapter's request by at most one admission per adapter waiting, never by the whole flood. When the
request whose turn it is does not fit, admission stops for this step (no overtaking: its adapter keeps its turn,
so a long request is never starved). A finished or cancelled sequence leaves at once and frees its cache.

The scheduler holds no lock of its own: ``GenerationEngine`` calls it under its lock.
"""

from __future__ import annotations

import itertools
import queue
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from adapterhub.serving.kv_cache import CacheBudget, SequenceKV

WAITING, RUNNING, FINISHED, CANCELLED, FAILED = "waiting", "running", "finished", "cancelled", "failed"
_IDS = itertools.count()


@dataclass(eq=False)
class SequenceState:
    """One request. ``prompt``: token ids; ``adapter``: an adapter name or None (the base alone); ``stop_ids``:
    token ids that end it (the stop token is kept, as ``model.generate`` does); ``sampler``: picks its tokens (its
    own generator); ``stop_strings``: text stops, or None; ``head``: a causal-LM head that turns its last hidden
    state into logits instead of the model's LM head (an adapter saved with one), or None; ``tokens``: new tokens so far (``logprobs`` beside them
    when asked for); ``streamed``: how many of them went to ``out``, the handle's stream (token ids, then ``None``
    or the exception that ended it; ``waker``, when set, is called after every item, from the stepping thread);
    ``finish_reason``: ``stop`` or ``length`` once finished."""

    prompt: list[int]
    adapter: Any  # a name, a Stack / Average of names, or None
    max_new_tokens: int
    stop_ids: frozenset[int]
    sampler: Any = None
    stop_strings: Any = None
    head: Any = None
    id: int = field(default_factory=lambda: next(_IDS))
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    streamed: int = 0
    finish_reason: str | None = None
    status: str = WAITING
    kv: SequenceKV | None = None
    error: BaseException | None = None
    out: queue.Queue[Any] = field(default_factory=queue.Queue)
    waker: Callable[[], None] | None = None

    def emit(self, item: Any) -> None:
        """Put a token id, ``None`` (the end) or an exception on the stream and wake an async reader."""
        self.out.put(item)
        waker = self.waker
        if waker is not None:
            waker()

    @property
    def reservation(self) -> int:
        """Cache tokens this sequence may ever hold."""
        return len(self.prompt) + self.max_new_tokens

    def next_ids(self) -> list[int]:
        """The tokens the next step feeds: the prompt before prefill, else the last new token."""
        return list(self.prompt) if self.kv is None or self.kv.length == 0 else [self.tokens[-1]]

    @property
    def done(self) -> bool:
        return self.status in (FINISHED, CANCELLED, FAILED)


class Scheduler:
    """Per-adapter waiting queues, the running set and the cache budget of one engine (see the module docstring)."""

    def __init__(self, max_num_seqs: int, max_batch_tokens: int, max_cache_tokens: int) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_batch_tokens = max_batch_tokens
        self.budget = CacheBudget(max_cache_tokens)
        self.queues: OrderedDict[Hashable, deque[SequenceState]] = OrderedDict()  # turn order: first is next
        self.running: list[SequenceState] = []

    @property
    def waiting(self) -> list[SequenceState]:
        """Every waiting sequence (adapter by adapter, in turn order)."""
        return [seq for q in self.queues.values() for seq in q]

    def waiting_count(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def add(self, seq: SequenceState) -> None:
        self.queues.setdefault(seq.adapter, deque()).append(seq)

    def has_work(self) -> bool:
        return bool(self.queues or self.running)

    def plan(self) -> tuple[list[SequenceState], list[SequenceState]]:
        """``(decoding, admitted)`` for the next step; admitted sequences become running and reserve cache."""
        decoding = list(self.running)
        tokens = len(decoding)
        admitted: list[SequenceState] = []
        while self.queues and len(self.running) < self.max_num_seqs:
            key, waiting = next(iter(self.queues.items()))
            seq = waiting[0]
            if tokens + len(seq.prompt) > self.max_batch_tokens or not self.budget.fits(seq.reservation):
                break
            waiting.popleft()
            if waiting:
                self.queues.move_to_end(key)
            else:
                del self.queues[key]
            self.budget.reserve(seq.reservation)
            seq.kv = SequenceKV(capacity=seq.reservation)
            seq.status = RUNNING
            self.running.append(seq)
            admitted.append(seq)
            tokens += len(seq.prompt)
        return decoding, admitted

    def leave(self, seq: SequenceState, status: str, error: BaseException | None = None) -> None:
        """End ``seq`` (finished, cancelled or failed): out of the queues, cache freed, stream closed."""
        if seq.done:
            return
        if seq in self.running:
            self.running.remove(seq)
            self.budget.release(seq.reservation)
        elif seq.adapter in self.queues and seq in self.queues[seq.adapter]:
            waiting = self.queues[seq.adapter]
            waiting.remove(seq)
            if not waiting:
                del self.queues[seq.adapter]
        if seq.kv is not None:
            seq.kv.free()
            seq.kv = None
        seq.status, seq.error = status, error
        seq.emit(error)

    def cache_tokens_in_use(self) -> int:
        """Tokens stored in the running sequences' caches."""
        return sum(s.kv.length for s in self.running if s.kv is not None)

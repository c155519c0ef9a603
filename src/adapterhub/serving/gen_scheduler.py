"""The generation engine's iteration-level scheduler: which sequences run in the next step, and how many tokens each
feeds.

A sequence's *history* is its prompt followed by its new tokens; its cache holds the first ``kv.length`` of them and
the step feeds the next ``feed`` (``pending`` = history - cached). A step samples a sequence's next token only when
the feed completes its history; a feed that stops short is a prefill *chunk* (no token, nothing consumed from its
generator). Every step runs all running sequences (a decoding one feeds its last new token; a prefilling one its
next chunk of at most ``prefill_chunk`` tokens, fewer when the step's ``max_batch_tokens`` are short, at least one)
and admits waiting requests while the bounds hold: at most ``max_num_seqs`` running, at most ``max_batch_tokens``
new tokens in the step (without ``prefill_chunk`` a prompt is fed whole, so it must fit), and the cache budget.

Two cache budgets (``max_cache_tokens``): by default a request reserves prompt + max new tokens when admitted and
waits until that fits, so a running sequence never runs out of room. With ``preempt``, sequences hold the cache
they use, in blocks of ``cache_block`` tokens (``gen_preempt``): a request is admitted when its first feed fits
with one free block per running sequence left (a watermark, so that it is not preempted at once; alone, when it
fits), and when the running sequences' next feeds do not fit, the newest running sequence is preempted (its cache freed,
back to the head of the queue, its turn first) and recomputed later from its history; its tokens are unchanged.

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

from adapterhub.serving.gen_preempt import fit_cache, held_after
from adapterhub.serving.kv_cache import CacheBudget, SequenceKV

WAITING, RUNNING, FINISHED, CANCELLED, FAILED = "waiting", "running", "finished", "cancelled", "failed"
_IDS = itertools.count()


@dataclass(eq=False)
class SequenceState:
    """One request. ``prompt``: token ids; ``adapter``: an adapter name or None (the base alone); ``stop_ids``:
    token ids that end it (the stop token is kept, as ``model.generate`` does); ``sampler``: picks its tokens (its
    own generator); ``stop_strings``: text stops, or None; ``head``: a causal-LM head that turns its last hidden
    state into logits instead of the model's LM head (an adapter saved with one), or None; ``tokens``: new tokens so far (``logprobs`` beside them
    when asked for, and ``top_logprobs``: each position's ``(id, logprob)`` alternatives, with ``top_logprobs`` > 0); ``streamed``: how many of them went to ``out``, the handle's stream (token ids, then ``None``
    or the exception that ended it; ``waker``, when set, is called after every item, from the stepping thread);
    ``finish_reason``: ``stop`` or ``length`` once finished; ``feed``: tokens of its history the planned step
    feeds (see the module docstring); ``lead``: soft-prompt positions in front of its history (prompt tuning;
    placeholder ids ``0`` whose embeddings ``gen_prompt`` puts in)."""

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
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    streamed: int = 0
    finish_reason: str | None = None
    status: str = WAITING
    kv: SequenceKV | None = None
    error: BaseException | None = None
    out: queue.Queue[Any] = field(default_factory=queue.Queue)
    waker: Callable[[], None] | None = None
    feed: int = 0
    lead: int = 0

    @property
    def runs(self) -> Any:
        """The adapter setup its rows run under: a prompt-tuning sequence (``lead`` soft tokens in front of its
        history, given as embeddings by ``gen_prompt``) runs as the base model."""
        return None if self.lead else self.adapter

    def keep(self, count: int) -> None:
        """Drop the new tokens after the first ``count`` (and their logprobs)."""
        del self.tokens[count:], self.logprobs[count:], self.top_logprobs[count:]

    def emit(self, item: Any) -> None:
        """Put a token id, ``None`` (the end) or an exception on the stream and wake an async reader."""
        self.out.put(item)
        waker = self.waker
        if waker is not None:
            waker()

    @property
    def reservation(self) -> int:
        """Cache tokens this sequence may ever hold."""
        return self.lead + len(self.prompt) + self.max_new_tokens

    @property
    def pending(self) -> int:
        """History tokens (soft prompt + prompt + new tokens) not in the cache yet."""
        return self.lead + len(self.prompt) + len(self.tokens) - (0 if self.kv is None else self.kv.length)

    @property
    def decoding(self) -> bool:
        """Whether the next feed is its last new token alone (not a prompt or a recompute)."""
        return bool(self.tokens) and self.pending == 1

    @property
    def samples(self) -> bool:
        """Whether the planned step completes its history, so that it picks the next token."""
        return self.feed == self.pending

    def next_ids(self) -> list[int]:
        """The ``feed`` tokens the planned step feeds: the history after what is cached."""
        start = 0 if self.kv is None else self.kv.length
        if start >= self.lead + len(self.prompt):
            at = start - self.lead - len(self.prompt)
            return self.tokens[at : at + self.feed]
        return [*([0] * self.lead), *self.prompt, *self.tokens][start : start + self.feed]

    @property
    def done(self) -> bool:
        return self.status in (FINISHED, CANCELLED, FAILED)


class Scheduler:
    """Per-adapter waiting queues, the running set and the cache budget of one engine (see the module docstring)."""

    def __init__(
        self,
        max_num_seqs: int,
        max_batch_tokens: int,
        max_cache_tokens: int,
        prefill_chunk: int | None = None,
        preempt: bool = False,
        cache_block: int = 16,
    ) -> None:
        self.max_num_seqs = max_num_seqs
        self.max_batch_tokens = max_batch_tokens
        self.prefill_chunk = prefill_chunk
        self.preempt = preempt
        self.cache_block = cache_block
        self.budget = CacheBudget(max_cache_tokens)
        self.queues: OrderedDict[Hashable, deque[SequenceState]] = OrderedDict()  # turn order: first is next
        self.running: list[SequenceState] = []  # in admission order: the last is the newest
        self.preempted = 0

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
        """``(running, admitted)`` for the next step with every sequence's ``feed`` set; admitted sequences become
        running and take their cache (with ``preempt``, running ones may be preempted first)."""
        chunk = self.prefill_chunk or self.max_batch_tokens
        left = self.max_batch_tokens - len(self.running)  # every running sequence feeds at least one token
        for seq in self.running:
            extra = min(min(chunk, seq.pending) - 1, left)
            seq.feed = 1 + extra
            left -= extra
        if self.preempt:
            for seq in fit_cache(self.running, self.budget.capacity, self.cache_block):
                self._preempt(seq)
            left = self.max_batch_tokens - sum(s.feed for s in self.running)
        running = list(self.running)
        admitted: list[SequenceState] = []
        while self.queues and len(self.running) < self.max_num_seqs:
            key, waiting = next(iter(self.queues.items()))
            seq = waiting[0]
            want = min(chunk, seq.pending)
            if self.prefill_chunk is not None:
                want = min(want, left)
            if want < 1 or want > left:
                break
            if self.preempt:
                # watermark: one free block per running sequence (the new one too) left to grow into
                room = self.cache_block * (len(self.running) + 1) if self.running else 0
                if held_after(self.running, self.cache_block, (seq, want)) + room > self.budget.capacity:
                    break
            elif not self.budget.fits(seq.reservation):
                break
            waiting.popleft()
            if waiting:
                self.queues.move_to_end(key)
            else:
                del self.queues[key]
            if self.preempt:
                seq.kv = SequenceKV(capacity=0, block=self.cache_block)
            else:
                self.budget.reserve(seq.reservation)
                seq.kv = SequenceKV(capacity=seq.reservation)
            seq.status, seq.feed = RUNNING, want
            self.running.append(seq)
            admitted.append(seq)
            left -= want
        return running, admitted

    def _preempt(self, seq: SequenceState) -> None:
        """Free ``seq``'s cache and put it back at the head of its queue, its adapter's turn first."""
        self.running.remove(seq)
        if seq.kv is not None:
            seq.kv.free()
        seq.kv, seq.status, seq.feed = None, WAITING, 0
        self.queues.setdefault(seq.adapter, deque()).appendleft(seq)
        self.queues.move_to_end(seq.adapter, last=False)
        self.preempted += 1

    def leave(self, seq: SequenceState, status: str, error: BaseException | None = None) -> None:
        """End ``seq`` (finished, cancelled or failed): out of the queues, cache freed, stream closed."""
        if seq.done:
            return
        if seq in self.running:
            self.running.remove(seq)
            if not self.preempt:
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

    def reserved_tokens(self) -> int:
        """Cache tokens counted against ``max_cache_tokens``: the reservations, or with ``preempt`` the blocks
        held."""
        if self.preempt:
            return sum(s.kv.capacity for s in self.running if s.kv is not None)
        return self.budget.used

"""The generation engine's preemption (``GenerationEngine(preempt=True)``): sequences hold the cache they use, in
blocks of ``block`` tokens, and when the running sequences' next feeds do not fit ``max_cache_tokens`` the newest
ones give way.

A running sequence with ``L`` cached tokens feeding ``f`` holds ``ceil((L + f) / block) * block`` cache tokens
after the step. ``fit_cache`` makes the sum fit the capacity by, newest sequence first: cutting its feed when it is
a prefill chunk (down to one token), else preempting it (the caller frees its cache and re-queues it; it is
recomputed later from its prompt and the tokens it already has, so its output is unchanged: greedy rows are
deterministic and a sampled row's generator is only drawn from when a token is picked). The oldest sequence always
runs, so every step makes progress and no request waits forever. Admission (``gen_scheduler``) leaves one free
block per running sequence (a watermark), so that a sequence just admitted is rarely the one preempted next step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def blocks(tokens: int, block: int) -> int:
    """``tokens`` rounded up to whole blocks of ``block`` tokens."""
    return -(-tokens // block) * block


def held_after(running: Sequence[Any], block: int, extra: tuple[Any, int] | None = None) -> int:
    """Cache tokens the ``running`` sequences hold after the planned step (each ``kv.length + feed``, in blocks),
    plus a sequence ``extra = (seq, feed)`` that would be admitted with an empty cache."""
    total = sum(blocks((0 if s.kv is None else s.kv.length) + s.feed, block) for s in running)
    if extra is not None:
        total += blocks(extra[1], block)
    return total


def fit_cache(running: Sequence[Any], capacity: int, block: int) -> list[Any]:
    """Cut feeds and pick the sequences to preempt (newest first) so that the rest fit ``capacity``; returns them
    (the caller preempts them; ``running`` is not changed, the kept sequences' ``feed`` may be)."""
    kept = list(running)
    victims: list[Any] = []
    while kept and (total := held_after(kept, block)) > capacity:
        newest = kept[-1]
        if newest.feed > 1:
            newest.feed = max(1, newest.feed - (total - capacity))
        elif len(kept) > 1:
            victims.append(kept.pop())
        else:  # one sequence alone always fits: the engine refuses a request whose whole length does not
            break
    return victims

"""What the generation engine does with a row's chosen token: ``choose`` it, ``accept`` it into its sequence,
``stream`` what is safe, ``finish`` or cancel the sequence (``end_cancelled``).

Contract of ``accept`` for a sequence with new tokens ``y`` (``y`` now ends with the accepted token ``t``):

- stop strings: the decoded ``y`` is searched for each of them (``StopStrings.check``); on a hit the ids are cut
  where the stop string begins (never before what was already streamed) and the sequence finishes with ``stop``;
  otherwise only the tokens that cannot begin a stop string go to the stream (the rest are held back);
- ``t`` in the sequence's stop ids: it finishes with ``stop`` (``t`` kept, as ``generate`` keeps its eos);
- ``len(y) == max_new_tokens``: it finishes with ``length``;
- else ``t`` is streamed (without stop strings).

Finishing streams every kept token first. Cancelling keeps the tokens already streamed (held-back ones are
dropped). Every function here runs under the engine's lock (the scheduler's state).
"""

from __future__ import annotations

import torch

from adapterhub.serving.gen_scheduler import CANCELLED, FINISHED, Scheduler, SequenceState
from adapterhub.serving.sampling import RowSampler, TopLogprobs


def choose(
    sampler: RowSampler, logits: torch.Tensor, greedy: int
) -> tuple[int, float | None, TopLogprobs | None]:
    """One row's ``(token, logprob, top)`` from its logits ``(V,)``: the batch argmax ``greedy`` for a greedy row
    without logprobs, else its sampler's choice."""
    if sampler.params.greedy and not sampler.params.logprobs:
        return int(greedy), None, None
    return sampler.choose(logits)


def accept(
    scheduler: Scheduler,
    seq: SequenceState,
    token: int,
    logprob: float | None,
    top: TopLogprobs | None,
) -> None:
    """Record a new token; stream what is safe; end the sequence on a stop id, stop string or its length (see the
    module docstring)."""
    seq.tokens.append(token)
    if logprob is not None:
        seq.logprobs.append(logprob)
    if top is not None:
        seq.top_logprobs.append(top)
    if seq.stop_strings is not None:
        count, hit = seq.stop_strings.check(seq.tokens)
        if hit:  # the ids end before the stop string (never before what was already streamed)
            seq.keep(max(count, seq.streamed))
            finish(scheduler, seq, "stop")
            return
        stream(seq, max(count, seq.streamed))
    if token in seq.stop_ids:
        finish(scheduler, seq, "stop")
    elif len(seq.tokens) >= seq.max_new_tokens:
        finish(scheduler, seq, "length")
    elif seq.stop_strings is None:
        stream(seq, len(seq.tokens))


def stream(seq: SequenceState, count: int) -> None:
    """Put tokens up to ``count`` on the stream; ``streamed`` moves first, so that a reader that gets a token
    already finds its logprobs in ``handle.logprobs`` / ``handle.top_logprobs``."""
    start = seq.streamed
    seq.streamed = max(start, count)
    for token in seq.tokens[start:count]:
        seq.emit(token)


def finish(scheduler: Scheduler, seq: SequenceState, reason: str) -> None:
    """Stream every kept token, set the finish ``reason`` and take the sequence out of the scheduler."""
    stream(seq, len(seq.tokens))
    seq.finish_reason = reason
    scheduler.leave(seq, FINISHED)


def end_cancelled(scheduler: Scheduler, seq: SequenceState) -> None:
    """Cancel: the sequence keeps the tokens already streamed (held-back ones are dropped); nothing when it has
    already ended."""
    if seq.done:
        return
    seq.keep(seq.streamed)
    scheduler.leave(seq, CANCELLED)

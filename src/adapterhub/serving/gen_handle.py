"""The handle of one request to the generation engine (``GenerationHandle``: stream, wait, cancel) and what a
finished sequence returns (``Completion``: ids, logprobs, top logprobs, finish reason)."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from adapterhub.errors import ConfigError
from adapterhub.serving.gen_scheduler import CANCELLED, FAILED, SequenceState


class _Engine(Protocol):
    """What a handle needs of its ``GenerationEngine``."""

    @property
    def running_in_background(self) -> bool: ...

    def step(self) -> Any: ...

    def _cancel(self, seq: SequenceState) -> None: ...


@dataclass(frozen=True)
class Completion:
    """One finished sequence: its new token ``ids``, their ``logprobs`` (None unless asked for),
    ``finish_reason`` (``stop``: a stop id or stop string; ``length``: ``max_new_tokens``; ``cancelled``) and
    ``top_logprobs`` (None unless ``top_logprobs`` > 0: per position, the most likely ``(id, logprob)`` pairs of
    the distribution the token was chosen from, most likely first)."""

    ids: list[int]
    logprobs: list[float] | None
    finish_reason: str
    top_logprobs: list[list[tuple[int, float]]] | None = None


class GenerationHandle:
    """One submitted request: iterate for its new token ids (``for`` or ``async for``); ``cancel()``;
    ``result()``; ``status``."""

    def __init__(self, engine: _Engine, seq: SequenceState) -> None:
        self._engine = engine
        self._seq = seq
        self._received: list[int] = []

    @property
    def status(self) -> str:
        """``waiting``, ``running``, ``finished``, ``cancelled`` or ``failed``."""
        return self._seq.status

    @property
    def tokens(self) -> list[int]:
        """The new token ids streamed so far (with stop strings, tokens that may begin one are held back)."""
        return self._seq.tokens[: self._seq.streamed]

    @property
    def wants_logprobs(self) -> bool:
        """Whether the request was submitted with ``logprobs=True``."""
        return bool(self._seq.sampler.params.logprobs)

    @property
    def logprobs(self) -> list[float]:
        """The log-probability of each token in ``tokens`` (submit with ``logprobs=True``)."""
        if not self._seq.sampler.params.logprobs:
            raise ConfigError(
                "This request was submitted without logprobs=True; submit it with logprobs=True."
            )
        return self._seq.logprobs[: self._seq.streamed]

    @property
    def wants_top_logprobs(self) -> bool:
        """Whether the request was submitted with ``top_logprobs`` > 0."""
        return bool(self._seq.sampler.params.top_logprobs)

    @property
    def top_logprobs(self) -> list[list[tuple[int, float]]]:
        """Per token in ``tokens``, the ``top_logprobs`` most likely ``(id, logprob)`` pairs of the distribution it
        was chosen from (submit with ``logprobs=True, top_logprobs=N``)."""
        if not self._seq.sampler.params.top_logprobs:
            raise ConfigError(
                "This request was submitted without top_logprobs; submit it with logprobs=True, top_logprobs=N."
            )
        return self._seq.top_logprobs[: self._seq.streamed]

    @property
    def finish_reason(self) -> str | None:
        """``stop`` (a stop id or stop string), ``length`` (``max_new_tokens``), ``cancelled``, ``failed``, or None
        while it runs."""
        if self._seq.status in (CANCELLED, FAILED):
            return self._seq.status
        return self._seq.finish_reason

    def __iter__(self) -> Iterator[int]:
        while True:
            if self._seq.done and self._seq.out.empty():  # ended and already read to its end
                return
            while self._seq.out.empty() and not self._engine.running_in_background:
                if self._engine.step() is None and self._seq.out.empty():
                    raise ConfigError(
                        "The engine has nothing to run, but this request has not ended (a bug)."
                    )
            item = self._seq.out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self._received.append(item)
            yield item

    def __aiter__(self) -> AsyncIterator[int]:
        """``async for token in handle``: needs the background thread (``engine.start()`` or ``with engine:``),
        so that the event loop only waits."""
        if not self._engine.running_in_background:
            raise ConfigError(
                "Async iteration needs the engine's background thread: call engine.start() (or use `with engine:`)."
            )
        return self._async_tokens()

    async def _async_tokens(self) -> AsyncIterator[int]:
        """Reads the stream without blocking the event loop or a thread: when it is empty, wait on an event that
        the stepping thread sets (``loop.call_soon_threadsafe``) after its next item."""
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:  # on the stepping thread
            loop.call_soon_threadsafe(ready.set)

        self._seq.waker = wake
        try:
            while True:
                try:
                    item = self._seq.out.get_nowait()
                except queue.Empty:
                    await ready.wait()
                    ready.clear()
                    continue
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._received.append(item)
                yield item
        finally:
            self._seq.waker = None

    def result(self) -> list[int]:
        """Wait for the end and return all new token ids (raises the error of a failed request)."""
        for _ in self:
            pass
        if self._seq.error is not None:
            raise self._seq.error
        return self._seq.tokens[: self._seq.streamed]

    def completion(self) -> Completion:
        """Wait for the end and return the ids with their logprobs and top logprobs (if asked for) and the finish
        reason."""
        ids = self.result()
        logprobs = self.logprobs if self.wants_logprobs else None
        top = self.top_logprobs if self.wants_top_logprobs else None
        return Completion(ids, logprobs, self.finish_reason or "", top)

    def cancel(self) -> None:
        """End the request now: it leaves the batch before the next step and its cache is freed at once."""
        self._engine._cancel(self._seq)

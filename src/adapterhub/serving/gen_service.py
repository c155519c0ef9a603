"""``serve-model``'s generation side: one ``GenerationEngine`` per served decoder, driven from the event loop.

``GenerationService(model, tokenizer, ...)`` holds the engine (its own background thread runs the steps; requests
join at any step). ``service.open(prompt_ids, adapter=..., head=..., n=..., ...)`` checks every prompt against the
model's context (``ContextLengthError``) and submits them all (prompt ``i``'s choice ``j`` at ``i * n + j``) or
none, returning a ``GenerationRun``: ``run.events()`` yields ``(index, token)`` as tokens come and ``(index,
None)`` when a sequence ends; leaving it early (a client that went away) cancels every sequence of the run, which
leaves the batch before the next step. ``run.completions()`` waits for the ``Completion`` of each sequence.
``on_end`` (given to ``open``) runs once when the run is over, however it ends (the adapter pin's release).

Metrics (``metrics.GenerationMetrics``, given to the service): ``open`` counts the request and its prompt tokens
under ``model`` (its label: the base model's id, an adapter's or a composition's name); the run times each token
as it reaches the event loop (time to first token from ``arrived``: the request's arrival, before its adapter's
load; then inter-token latency) and counts the
finish reason of each sequence when the run ends; the engine's ``stats()`` feeds the running/waiting gauges.

``GuardedExecutor`` is the server's model thread: each job (an adapter load or eviction, an encoder pass) runs
inside ``service.engine.exclusive()``, so the model never changes while a generation step runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.serving.gen_engine import GenerationEngine
from adapterhub.serving.gen_handle import Completion, GenerationHandle
from adapterhub.serving.metrics import GenerationMetrics
from adapterhub.serving.scheduler import QueueFullError, ShuttingDownError


class ContextLengthError(ConfigError):
    """A prompt plus the tokens asked for exceed the model's context (OpenAI: 400 ``context_length_exceeded``)."""


def is_causal_lm(model: Any) -> bool:
    """A decoder-only model with an LM head (what the generation engine runs)."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False):
        return False
    getter = getattr(model, "get_output_embeddings", None)
    return callable(getter) and getter() is not None


class GuardedExecutor(ThreadPoolExecutor):
    """A one-thread executor whose jobs run inside ``guard()`` (when set)."""

    def __init__(self, thread_name_prefix: str) -> None:
        super().__init__(1, thread_name_prefix=thread_name_prefix)
        self.guard: Callable[[], AbstractContextManager[Any]] | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        guard = self.guard
        if guard is None:
            return super().submit(fn, *args, **kwargs)

        def guarded() -> Any:
            with guard():
                return fn(*args, **kwargs)

        return super().submit(guarded)


class GenerationRun:
    """The sequences of one HTTP request (see the module docstring)."""

    def __init__(
        self,
        handles: list[GenerationHandle],
        on_end: Callable[[], None],
        *,
        metrics: GenerationMetrics | None = None,
        model: str = "",
        arrived: float | None = None,
    ) -> None:
        self.handles = handles
        self._on_end: Callable[[], None] | None = on_end
        self._metrics = metrics
        self._model = model
        self._arrived = time.perf_counter() if arrived is None else arrived

    def cancel(self) -> None:
        """Cancel every sequence still running (each leaves the batch before the next step)."""
        self._end()

    def _end(self) -> None:
        for handle in self.handles:
            handle.cancel()  # nothing for the ones that ended
        on_end, self._on_end = self._on_end, None
        if on_end is None:
            return
        if self._metrics is not None:
            for handle in self.handles:
                self._metrics.finish(handle.finish_reason or handle.status)
        on_end()

    async def events(self) -> AsyncGenerator[tuple[int, int | None], None]:
        """``(index, token id)`` per new token, ``(index, None)`` when sequence ``index`` ends; raises the error of
        a failed sequence. Closing the iterator early cancels every sequence of the run."""
        queue: asyncio.Queue[tuple[int, int | BaseException | None]] = asyncio.Queue()

        async def pump(index: int, handle: GenerationHandle) -> None:
            last, first = self._arrived, True
            try:
                async for token in handle:
                    if self._metrics is not None:
                        now = time.perf_counter()
                        self._metrics.token(self._model, now - last, first)
                        last, first = now, False
                    queue.put_nowait((index, token))
                queue.put_nowait((index, None))
            except Exception as error:
                queue.put_nowait((index, error))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(self.handles)]
        try:
            left = len(tasks)
            while left:
                index, item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    left -= 1
                yield index, item
        finally:
            self._end()
            for task in tasks:
                task.cancel()

    async def completions(self) -> list[Completion]:
        """Wait for every sequence; its ids, logprobs (if asked for) and finish reason."""
        async for _ in self.events():
            pass
        return [handle.completion() for handle in self.handles]


class GenerationService:
    """One ``GenerationEngine`` over ``model`` (a causal LM that ``adapterhub.init`` was applied to); stop ids: the
    model's eos ids and the tokenizer's. ``max_waiting``: sequences waiting for admission before 429;
    ``prefill_chunk`` / ``max_cache_tokens`` / ``preempt`` / ``cache_block`` / ``packed``: the engine's
    (``GenerationEngine``; ``packed`` None by default here: packed steps wherever exact and supported)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_num_seqs: int,
        max_batch_tokens: int,
        max_waiting: int,
        max_length: int | None,
        metrics: GenerationMetrics | None = None,
        prefill_chunk: int | None = None,
        max_cache_tokens: int | None = None,
        preempt: bool = False,
        cache_block: int = 16,
        packed: bool | None = None,
    ) -> None:
        stops = set(GenerationEngine.default_stop_ids(model))
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is not None:
            stops.add(int(eos))
        self.engine = GenerationEngine(
            model,
            max_num_seqs=max_num_seqs,
            max_batch_tokens=max_batch_tokens,
            prefill_chunk=prefill_chunk,
            max_cache_tokens=max_cache_tokens,
            preempt=preempt,
            cache_block=cache_block,
            packed=packed,
            stop_ids=sorted(stops),
            tokenizer=tokenizer,
        )
        self.stop_ids = frozenset(stops)
        limits = [x for x in (self.engine.context, max_length) if x is not None]
        self.context: int | None = min(limits) if limits else None
        self.max_waiting = max_waiting
        self.metrics = metrics
        if metrics is not None:
            metrics.state = self.engine.stats
        self._closing = False

    def start(self) -> None:
        self._closing = False
        self.engine.start()

    async def shutdown(self) -> None:
        """Refuse new requests, let the running and waiting ones finish, then stop the engine's thread."""
        self._closing = True
        while self.engine.running_in_background and any(
            self.engine.stats()[k] for k in ("waiting", "running")
        ):
            await asyncio.sleep(0.02)
        await asyncio.to_thread(self.engine.close)

    def max_new_tokens_for(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | None) -> int:
        """``max_new_tokens``, checked against the context; None: as many as the longest prompt leaves."""
        longest = max(len(p) for p in prompt_ids)
        if max_new_tokens is None:
            if self.context is None:
                raise ConfigError("This model states no context length; give max_tokens.")
            max_new_tokens = self.context - longest
            if max_new_tokens < 1:
                raise ContextLengthError(
                    f"This model's maximum context length is {self.context} tokens; the prompt has {longest} "
                    "tokens, which leaves no room for a completion. Shorten the prompt."
                )
            return max_new_tokens
        if self.context is not None and longest + max_new_tokens > self.context:
            raise ContextLengthError(
                f"This model's maximum context length is {self.context} tokens; you asked for {longest + max_new_tokens} "
                f"tokens ({longest} in the prompt, {max_new_tokens} for the completion). Shorten the prompt or lower "
                "max_tokens."
            )
        return max_new_tokens

    def open(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        adapter: Any,
        head: Any,
        n: int,
        max_new_tokens: int,
        tokenizer: Any,
        sampling: dict[str, Any],
        on_end: Callable[[], None],
        model: str = "",
        arrived: float | None = None,
    ) -> GenerationRun:
        """Submit ``n`` sequences of every prompt (all or none) and return their run. Calls ``on_end`` (also when
        it raises). ``model``: the request's label in the metrics; ``arrived``: its ``time.perf_counter()`` at
        arrival, where time to first token starts (None: now)."""
        handles: list[GenerationHandle] = []
        try:
            if self._closing:
                raise ShuttingDownError("The server is shutting down; send the request to another replica.")
            waiting = self.engine.stats()["waiting"]
            if waiting + len(prompt_ids) * n > self.max_waiting:
                raise QueueFullError(
                    f"{waiting} sequences wait for the generation engine (at most {self.max_waiting}); retry later.",
                    retry_after=max(1, waiting // max(1, self.engine.max_num_seqs)),
                )
            # checked twice: the engine's checks raise before anything is queued for the first prompt only
            for ids in prompt_ids:
                self.engine.check(ids, adapter=adapter, max_new_tokens=max_new_tokens, n=n, head=head,
                                  tokenizer=tokenizer, **sampling)  # fmt: skip
            for ids in prompt_ids:
                handles += self.engine.submit_choices(
                    ids, n=n, adapter=adapter, max_new_tokens=max_new_tokens, tokenizer=tokenizer, head=head,
                    **sampling,
                )  # fmt: skip
        except BaseException:
            GenerationRun(handles, on_end)._end()
            raise
        if self.metrics is not None:
            self.metrics.request(model, sum(len(ids) for ids in prompt_ids))
        return GenerationRun(handles, on_end, metrics=self.metrics, model=model, arrived=arrived)

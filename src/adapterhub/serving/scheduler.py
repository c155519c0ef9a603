"""Collect requests into forward passes: up to ``max_wait_ms`` after the first one arrives or ``max_batch_rows``
rows, whichever comes first, then one pass for all of them (``passes.run_batch``), then the next.

A request with more rows than ``max_batch_rows`` runs in a pass of its own; a request that would overflow the
current pass waits for the next one (arrival order is kept). The queue holds at most ``max_queue_rows`` rows:
``submit`` beyond that raises ``QueueFullError`` with a ``retry_after`` estimate in seconds (HTTP 429).
``drain()`` stops new submissions and returns once every queued request has its result (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapterhub.errors import AdapterHubError
from adapterhub.serving.metrics import Metrics
from adapterhub.serving.passes import Work


class QueueFullError(AdapterHubError):
    """The queue holds ``max_queue_rows`` rows already (HTTP 429 with ``Retry-After``)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDownError(AdapterHubError):
    """The server is shutting down and takes no new requests (HTTP 503)."""


@dataclass
class _Item:
    work: Work
    future: asyncio.Future[list[Any]]
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return self.work.encoded.rows


Runner = Callable[[Sequence[Work]], Awaitable[Sequence[list[Any] | BaseException]]]


class Scheduler:
    """The batching loop (see the module docstring). ``run(works)`` runs one pass (on the model thread)."""

    def __init__(
        self,
        run: Runner,
        *,
        max_batch_rows: int = 64,
        max_wait_ms: float = 5.0,
        max_queue_rows: int = 4096,
        metrics: Metrics | None = None,
    ) -> None:
        self._run = run
        self.max_batch_rows = max_batch_rows
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self.metrics = metrics or Metrics()
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_pass = 0.01  # seconds; for the Retry-After estimate

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def check_room(self, rows: int) -> None:
        """Raise ``QueueFullError`` / ``ShuttingDownError`` if ``rows`` more rows cannot be queued now."""
        if self._closing:
            raise ShuttingDownError(
                "The server is shutting down; send the request to another replica or retry."
            )
        if self._queued_rows and self._queued_rows + rows > self.max_queue_rows:
            passes = math.ceil(self._queued_rows / self.max_batch_rows)
            retry = max(1, math.ceil(passes * self._last_pass))
            raise QueueFullError(
                f"The queue is full ({self._queued_rows} rows waiting, at most {self.max_queue_rows}); retry in "
                f"{retry} s.",
                retry,
            )

    def submit(self, work: Work) -> asyncio.Future[list[Any]]:
        """Queue ``work``; the future gets its predictions (or the exception of its pass)."""
        self.check_room(work.encoded.rows)
        item = _Item(work, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._queued_rows += item.rows
        self.metrics.queue_rows = self._queued_rows
        self._wake.set()
        return item.future

    async def drain(self) -> None:
        """Refuse new requests and wait until every queued request is answered; then stop the loop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = await self._collect()
            await self._run_batch(batch)

    async def _collect(self) -> list[_Item]:
        """Take items for one pass, waiting up to ``max_wait`` after the first for more rows."""
        deadline = self._queue[0].enqueued + self.max_wait
        while not self._closing and self._queued_rows < self.max_batch_rows:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Item] = []
        rows = 0
        while self._queue and (not batch or rows + self._queue[0].rows <= self.max_batch_rows):
            item = self._queue.popleft()
            batch.append(item)
            rows += item.rows
        self._queued_rows -= rows
        self.metrics.queue_rows = self._queued_rows
        return batch

    async def _run_batch(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        for item in batch:
            self.metrics.queue.observe(started - item.enqueued)
        live = [item for item in batch if not item.future.done()]  # a cancelled request needs no rows
        try:
            results = await self._run([item.work for item in live]) if live else []
        except BaseException as error:  # the pass itself failed: every request of it gets the error
            results = [error] * len(live)
        self._last_pass = max(time.perf_counter() - started, 1e-3)
        self.metrics.batch(sum(i.rows for i in live), len(live), self._last_pass)
        for item, result in zip(live, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)

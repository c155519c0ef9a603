"""The adapters a server knows, the ones it holds in memory, and loading/eviction between the two.

- ``sources``: every adapter the server can serve (name -> ``AdapterSource``), loaded or not.
- ``loaded``: at most ``max_loaded`` adapters in the model, least recently used first. A request ``acquire``s the
  adapters it names: loaded ones are pinned at once; the others are loaded first. A load in flight is never
  duplicated: later requests for the same adapter wait on the same future (single flight). When the model is
  full, the least recently used adapter that no queued or running request has pinned is evicted
  (``model.delete_adapter``); if every loaded adapter is pinned, the load waits until a pass releases one.
- Identity by weights: every loaded adapter also gets ``hash``, a SHA-256 of its method config and every tensor
  (adapter and head, names, dtypes, shapes and bytes): ``weights_hash``. A name reloaded with other weights gets
  another hash, so anything derived from an adapter (the server's tokenizer cache) is keyed by ``(name, hash)``
  and dropped when the name is unregistered; the last known hash of an evicted adapter stays in ``hashes``.
- Heads are taken out of the model's store once an adapter is loaded and kept in its ``LoadedAdapter``: the
  engine applies each request's head to that request's rows itself, so one pass can serve adapters with
  different heads.

A load: ``fetch`` + ``prepare`` (read the files, build the modules) and, for an adapter that the install leaves as
prepared (no head, placed beside the model: every LoRA of a served decoder), its sizes and weights hash, all in one
job on an I/O thread, beside the steps; then room is made (LRU victims chosen on the loop); then the install.
Installs are batched: every load that is ready when the model thread gets to them goes in (with its victims'
deletions) in ONE model-thread job, one pause between two steps, instead of one job each (back-to-back jobs could
let a step run between them); a load that becomes ready while a job runs gets the next job, submitted at once.
One failing install fails its own load only. An adapter
that the install changes (a head taken out of the model, a base-changing method placed at install, ``hf:``
sources) is hashed after it is in the model, on an I/O thread, as before: the hash is the same either way.

Everything here runs on the event loop, except fetch/prepare/hash (I/O thread) and install/evict (the model
thread, the same single thread that runs forward passes, so the model never changes during a pass).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import torch

from adapterhub.errors import AdapterNotFoundError, ConfigError, did_you_mean
from adapterhub.serving import sources
from adapterhub.serving.sources import AdapterSource


class UnknownAdapterError(AdapterNotFoundError):
    """A request names an adapter the server does not know (HTTP 404)."""


@dataclass
class LoadedAdapter:
    """An adapter in the model: its method, its detached head (None without one) and its size in memory."""

    name: str
    source: AdapterSource
    method: str
    head: Any
    parameters: int
    memory_bytes: int
    hash: str = ""

    @property
    def head_type(self) -> str | None:
        return None if self.head is None else str(self.head.head_type)

    @property
    def labels(self) -> list[str] | None:
        id2label = getattr(self.head, "id2label", None)
        return None if not id2label else [id2label[i] for i in sorted(id2label)]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": str(self.source),
            "loaded": True,
            "method": self.method,
            "head": self.head_type,
            "labels": self.labels,
            "parameters": self.parameters,
            "memory_bytes": self.memory_bytes,
            "hash": self.hash,
        }


def weights_hash(method: str, config: Any, tensors: Iterable[tuple[str, Any]]) -> str:
    """``sha256:`` + hex digest of the method, its config (JSON, keys sorted) and each ``(name, tensor)`` (name,
    dtype, shape, raw bytes), in name order: equal for the same weights and config, whatever their source."""
    digest = hashlib.sha256(method.encode())
    to_dict = getattr(config, "to_dict", None)
    described = to_dict() if callable(to_dict) else repr(config)
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        data = tensor.detach().contiguous().cpu()
        digest.update(f"\0{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())  # the raw bytes, read in place
    return "sha256:" + digest.hexdigest()


def _swap_in(
    model: Any, victims: list[str], source: AdapterSource, fetched: Any, prepared: Any, name: str
) -> tuple[Any, Any]:
    """On the model thread, between two steps: delete the evicted adapters, put the prepared one in and take its
    head out of the model's store. Quick: the files were read and the modules built beforehand
    (``sources.prepare``). Returns ``(adapter module, head or None)``."""
    for victim in victims:
        _evict(model, victim)
    sources.install(source, fetched, model, name, prepared)
    head = model.heads.get(name)
    if head is not None:
        model.delete_head(name)
        head.eval()
    return model._store.adapters[name], head


@dataclass(frozen=True)
class Described:
    """What ``LoadedAdapter`` records of an adapter's tensors: ``parameters`` (elements), ``memory_bytes`` and the
    ``weights_hash``."""

    parameters: int
    memory_bytes: int
    hash: str


def describe_tensors(adapter: Any, head: Any) -> Described:
    """Sizes and weights hash of an adapter module and its head (None without one): the hash covers
    ``adapter.<key>`` of every entry of the adapter's state dict and ``head.<key>`` of the head's (any thread;
    reads only)."""
    tensors = [*adapter.parameters(), *(head.parameters() if head is not None else ())]
    named = [(f"adapter.{k}", t) for k, t in adapter.state_dict().items()]
    if head is not None:
        named += [(f"head.{k}", t) for k, t in head.state_dict().items()]
    return Described(
        parameters=sum(t.numel() for t in tensors),
        memory_bytes=sum(t.numel() * t.element_size() for t in tensors),
        hash=weights_hash(adapter.method, adapter.config, named),
    )


def describe_prepared(prepared: Any) -> Described | None:
    """``describe_tensors`` of a prepared adapter BEFORE its install, where the install leaves its tensors as they
    are: no head (the install would build one in the model) and ``placed`` (a base-changing adapter is placed at
    install). The installed module is then the prepared one (checked at the install), so the hash equals the one
    taken after it. None otherwise (and for ``hf`` sources, which prepare nothing): hash after the install."""
    if prepared is None or not prepared.placed or prepared.apply_head is not None:
        return None
    return describe_tensors(prepared.module, None)


def _entry(name: str, source: AdapterSource, adapter: Any, head: Any) -> LoadedAdapter:
    """The ``LoadedAdapter`` of an installed adapter: sizes and weights hash (any thread; reads only)."""
    return _loaded(name, source, adapter, head, describe_tensors(adapter, head))


def _loaded(name: str, source: AdapterSource, adapter: Any, head: Any, described: Described) -> LoadedAdapter:
    return LoadedAdapter(
        name=name,
        source=source,
        method=adapter.method,
        head=head,
        parameters=described.parameters,
        memory_bytes=described.memory_bytes,
        hash=described.hash,
    )


@dataclass
class _Install:
    """A load ready to go in: what ``_swap_in`` takes, and the loop's future for its ``(adapter, head)``."""

    name: str
    victims: list[str]
    source: AdapterSource
    fetched: Any
    prepared: Any
    done: asyncio.Future[tuple[Any, Any]] = field(repr=False)


def _job_error(done: asyncio.Future[Any]) -> Exception:
    """Why a model-thread job failed as a whole, as an ``Exception`` (cancelled: a ``RuntimeError``)."""
    if done.cancelled():
        return RuntimeError("The adapter install job was cancelled (the server is shutting down).")
    error = done.exception()
    return (
        error if isinstance(error, Exception) else RuntimeError(f"The adapter install job stopped: {error!r}")
    )


def _install_batch(model: Any, take: Callable[[], list[_Install]]) -> list[tuple[_Install, Any]]:
    """On the model thread, in one pause of the steps: ``_swap_in`` every load ``take()`` hands over (those ready
    now). Returns ``(load, (adapter, head))`` or ``(load, exception)`` per load: a failed install fails that load
    alone."""
    out: list[tuple[_Install, Any]] = []
    for job in take():
        try:
            out.append((job, _swap_in(model, job.victims, job.source, job.fetched, job.prepared, job.name)))
        except Exception as error:
            out.append((job, error))
    return out


def _evict(model: Any, name: str) -> None:
    if model.has_adapter(name):
        model.delete_adapter(name)


class AdapterRegistry:
    """Known and loaded adapters of one served model (see the module docstring).

    ``on_event(kind, name)`` is called with ``"load"``, ``"evict"`` or ``"load_error"``, and per adapter a request
    acquires with ``"hit"`` (resident) or ``"miss"`` (loaded for it, or already loading) (metrics)."""

    def __init__(
        self,
        model: Any,
        *,
        max_loaded: int,
        model_executor: Executor,
        io_executor: Executor | None = None,
        hub_url: str | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        if max_loaded < 1:
            raise ConfigError(f"max_loaded must be at least 1, got {max_loaded}.")
        self.model = model
        self.max_loaded = max_loaded
        self.hub_url = hub_url
        self._model_executor = model_executor
        self._io_executor = io_executor
        self._on_event = on_event or (lambda kind, name: None)
        self.sources: dict[str, AdapterSource] = {}
        self.loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self.load_count: Counter[str] = Counter()  # completed loads per name (tests, metrics)
        self.hashes: dict[str, str] = {}  # name -> weights hash of its last load (kept while evicted)
        self._inflight: dict[str, asyncio.Future[LoadedAdapter]] = {}
        self._pins: Counter[str] = Counter()
        self._room: asyncio.Condition | None = None
        self._installing = 0  # loads past _make_room whose adapter is not in `loaded` yet
        # loads ready to go in: appended on the loop, taken by the model thread's install job (under _ready_lock)
        self._ready: list[_Install] = []
        self._ready_lock = threading.Lock()
        self._install_queued = False  # a model-thread job is queued that has not taken `_ready` yet

    # ------------------------------------------------------------------ known adapters
    def register(self, name: str, source: AdapterSource | str) -> None:
        from adapterhub.heads.api import check_name

        check_name(name)
        self.sources[name] = source if isinstance(source, AdapterSource) else sources.parse_source(source)

    def check_known(self, names: Iterable[str]) -> None:
        """Raise ``UnknownAdapterError`` naming close matches for the first name the server does not know."""
        for name in names:
            if name not in self.sources:
                known = ", ".join(sorted(self.sources)) or "none"
                raise UnknownAdapterError(
                    f"No adapter named {name!r}{did_you_mean(name, self.sources)}. Adapters on this server: {known}."
                )

    async def unregister(self, name: str) -> None:
        """Forget ``name`` and evict it (waits for passes that use it)."""
        self.check_known([name])
        del self.sources[name]
        self.hashes.pop(name, None)
        pending = self._inflight.get(name)
        if pending is not None:
            await asyncio.gather(pending, return_exceptions=True)
        room = self._condition()
        async with room:
            await room.wait_for(lambda: self._pins[name] == 0)
        if name in self.loaded:
            del self.loaded[name]
            self._on_event("evict", name)
            await self._run_model(_evict, self.model, name)

    def describe(self) -> list[dict[str, Any]]:
        """Every known adapter: loaded ones with method, head, labels and memory; the others with their source."""
        out = []
        for name, source in sorted(self.sources.items()):
            entry = self.loaded.get(name)
            out.append(
                entry.describe()
                if entry is not None
                else {"name": name, "source": str(source), "loaded": False, "hash": self.hashes.get(name)}
            )
        return out

    # ------------------------------------------------------------------ acquiring for a request
    async def acquire(self, names: Iterable[str]) -> dict[str, LoadedAdapter]:
        """Pin ``names`` (loading those not in memory) and return them; pair with ``release(names)``. On a failed
        load the pins are released and the ``SourceError`` propagates."""
        wanted = list(dict.fromkeys(names))
        self.check_known(wanted)
        if len(wanted) > self.max_loaded:
            raise ConfigError(
                f"This setup needs {len(wanted)} adapters in memory at once, but the server holds at most "
                f"{self.max_loaded} (--max-loaded)."
            )
        for name in wanted:
            self._pins[name] += 1
        try:
            out = {}
            for name in wanted:
                self._on_event("hit" if name in self.loaded else "miss", name)
                out[name] = self.loaded[name] if name in self.loaded else await self._load(name)
                self.loaded.move_to_end(name)
            return out
        except BaseException:
            self.release(wanted)
            raise

    def release(self, names: Iterable[str]) -> None:
        for name in dict.fromkeys(names):
            self._pins[name] -= 1
            if self._pins[name] <= 0:
                del self._pins[name]
        self._notify()

    def _notify(self) -> None:
        """Wake loads waiting for room (a pin was released or a slot freed)."""
        room = self._condition()

        async def notify() -> None:
            async with room:
                room.notify_all()

        asyncio.get_running_loop().create_task(notify())

    async def _load(self, name: str) -> LoadedAdapter:
        pending = self._inflight.get(name)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[name] = pending
            asyncio.get_running_loop().create_task(self._load_once(name, pending))
        return await asyncio.shield(pending)

    async def _load_once(self, name: str, done: asyncio.Future[LoadedAdapter]) -> None:
        try:
            self.check_known([name])  # it may have been deleted since the request named it
            source = self.sources[name]
            loop = asyncio.get_running_loop()

            def fetch_and_prepare() -> tuple[Any, Any, Described | None]:  # I/O thread, beside the steps
                fetched = sources.fetch(source, self.model, hub_url=self.hub_url)
                prepared = sources.prepare(source, fetched, self.model, name)
                return fetched, prepared, describe_prepared(prepared)

            fetched, prepared, described = await loop.run_in_executor(self._io_executor, fetch_and_prepare)
            victims = await self._make_room()
            try:  # its slot stays reserved until it is in `loaded`
                adapter, head = await self._install(name, victims, source, fetched, prepared)
                if described is not None and adapter is prepared.module and head is None:
                    entry = _loaded(name, source, adapter, head, described)
                else:
                    entry = await loop.run_in_executor(self._io_executor, _entry, name, source, adapter, head)
                self.loaded[name] = entry
            finally:
                self._installing -= 1
                self._notify()
            self.hashes[name] = entry.hash
            self.load_count[name] += 1
            self._on_event("load", name)
            done.set_result(entry)
        except Exception as error:  # every waiter gets the failure; a later request tries again
            self._on_event("load_error", name)
            done.set_exception(error)
            done.exception()  # retrieved: no "never retrieved" warning when no request waits any more
        finally:
            self._inflight.pop(name, None)

    async def _make_room(self) -> list[str]:
        """Choose the least recently used unpinned adapter(s) to evict until one more fits, waiting while all are
        pinned; returns them (the model thread deletes them with the install, in one pause of the steps)."""
        room = self._condition()
        victims: list[str] = []
        while len(self.loaded) + self._installing >= self.max_loaded:
            async with room:
                await room.wait_for(self._has_room_or_victim)
            victim = self._victim()
            if len(self.loaded) + self._installing < self.max_loaded or victim is None:
                continue
            del self.loaded[victim]  # decided on the loop: no batch formed from now on sees it as loaded
            self._on_event("evict", victim)  # before the model thread deletes it (fusions holding it go too)
            victims.append(victim)
        self._installing += 1
        return victims

    async def _install(
        self, name: str, victims: list[str], source: AdapterSource, fetched: Any, prepared: Any
    ) -> tuple[Any, Any]:
        """Queue the load for the model thread and wait for its ``(adapter, head)``. A job is submitted unless one
        is queued that has not taken its loads yet: a job takes every load ready when it runs (the steps paused),
        so loads ready together go in together, and a load that becomes ready while a job installs gets a job
        queued right behind it on the model thread (no detour through the event loop, where the step loop could
        start a step in between)."""
        loop = asyncio.get_running_loop()
        job = _Install(name, victims, source, fetched, prepared, loop.create_future())
        with self._ready_lock:
            self._ready.append(job)
            submit = not self._install_queued
            self._install_queued = True
        if submit:
            self._submit_install_job(loop)
        return await job.done

    def _submit_install_job(self, loop: asyncio.AbstractEventLoop) -> None:
        taken: list[_Install] = []  # this job's loads (per job, never on the registry)

        def take() -> list[_Install]:  # model thread, the steps paused
            with self._ready_lock:
                batch, self._ready = self._ready, []
                self._install_queued = False
            taken.extend(batch)
            return batch

        def installed(done: asyncio.Future[list[tuple[_Install, Any]]]) -> None:  # event loop
            error = None if not done.cancelled() and done.exception() is None else _job_error(done)
            if error is not None:
                self._fail_installs(taken, error)
                return
            for job, outcome in done.result():
                if isinstance(outcome, Exception):
                    job.done.set_exception(outcome)
                else:
                    job.done.set_result(outcome)

        try:
            submitted = loop.run_in_executor(self._model_executor, _install_batch, self.model, take)
        except RuntimeError as error:  # the model thread is shut down
            self._fail_installs(taken, error)
            return
        submitted.add_done_callback(installed)

    def _fail_installs(self, taken: list[_Install], error: Exception) -> None:
        """An install job failed as a whole (it did not run): its loads and those waiting for a job fail."""
        with self._ready_lock:
            left, self._ready = self._ready, []
            self._install_queued = False
        for job in [*taken, *left]:
            if not job.done.done():
                job.done.set_exception(error)

    def _has_room_or_victim(self) -> bool:
        return len(self.loaded) + self._installing < self.max_loaded or self._victim() is not None

    def _victim(self) -> str | None:
        return next((name for name in self.loaded if self._pins[name] == 0), None)

    def _condition(self) -> asyncio.Condition:
        if self._room is None:
            self._room = asyncio.Condition()
        return self._room

    async def _run_model(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._model_executor, fn, *args)

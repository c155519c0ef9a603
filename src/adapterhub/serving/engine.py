"""``ServingEngine``: one base model, many adapters, requests for different adapters in one forward pass.

Public API (stable; the HTTP app and the Ray Serve deployment build on it)::

    engine = ServingEngine.from_pretrained("path/or/name", adapters={"sst2": "runs/sst2",
                                                                     "ner": "ner/conll2003@alice"},
                                           config=EngineConfig(max_loaded=8, max_batch_rows=64, max_wait_ms=5))
    await engine.start()                                   # inside a running event loop
    await engine.predict(["a great film"], adapter="sst2") # {"adapter": "sst2", "predictions": [...]}
    await engine.predict(texts, setup="Stack(lang, task)") # {"setup": "Stack('lang', 'task')", ...}
    await engine.predict(texts, setup="Fuse(a, b, c)")     # fusions: ServingEngine(..., fusions=[dir]) / add_fusion
    await engine.embed(texts, adapter="sst2", pooling="mean")   # {"embeddings": [[...], ...]}
    await engine.generate(["Once"], adapter="lm", max_new_tokens=16)  # {"texts": [...], "token_ids": [...]}
    async for step in engine.generate_stream(["Once"], adapter="lm"):  # [token id or None per prompt]
        ...
    await engine.add_adapter("new", "dir/or/hub-id")        # known from now on, loaded on first use
    await engine.load("new")                                # load now (e.g. Ray's multiplexed model loading)
    await engine.remove_adapter("new")                      # forget and evict
    engine.adapters()                                       # known adapters, loaded ones with head/labels/memory
    engine.metrics.render()                                 # Prometheus text
    await engine.shutdown()                                 # finishes queued requests

Errors (``adapterhub.errors`` subclasses; ``app.py`` maps them to HTTP): ``UnknownAdapterError`` (404, names close
matches), ``ConfigError`` / ``InputTooLongError`` (422), ``QueueFullError`` (429, ``retry_after``),
``SourceError`` (502, the adapter's source failed to load; other requests are unaffected), ``ShuttingDownError``
(503).

Threads: the event loop does the bookkeeping and tokenisation; one model thread runs every forward pass, load
and eviction (so the model never changes during a pass); an I/O pool fetches adapters from the hub.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.serving import encoding
from adapterhub.serving.fusions import FusionRegistry, read_fusion_source
from adapterhub.serving.generation import check_generates, generate_ids
from adapterhub.serving.metrics import Metrics
from adapterhub.serving.passes import Work, run_batch
from adapterhub.serving.predictions import check_predicts
from adapterhub.serving.registry import AdapterRegistry, LoadedAdapter
from adapterhub.serving.scheduler import Scheduler
from adapterhub.serving.setups import parse_request_setup
from adapterhub.serving.sources import AdapterSource
from adapterhub.spec.composition import Setup, setup_names

POOLINGS = ("mean", "first", "last")


@dataclass(frozen=True)
class EngineConfig:
    """``max_loaded``: adapters in memory at most; ``max_batch_rows``: rows per pass; ``max_wait_ms``: how long
    the first request of a pass waits for others; ``max_queue_rows``: rows waiting before 429; ``max_length``:
    tokens per row (None: the model's limit); ``hub_url``: the hub for hub identifiers (None: the client's
    default)."""

    max_loaded: int = 8
    max_batch_rows: int = 64
    max_wait_ms: float = 5.0
    max_queue_rows: int = 4096
    max_length: int | None = None
    hub_url: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_loaded", "max_batch_rows", "max_queue_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.max_wait_ms, (int, float)) or self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be a number >= 0, got {self.max_wait_ms!r}.")
        if self.max_length is not None and (not isinstance(self.max_length, int) or self.max_length < 1):
            raise ConfigError(f"max_length must be a positive integer or None, got {self.max_length!r}.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"Unknown engine option(s) {unknown}; valid: {', '.join(sorted(valid))}.")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _describe(setup: Setup) -> str:
    return setup if isinstance(setup, str) else repr(setup)


class ServingEngine:
    """See the module docstring. ``model``: a transformers base model (``AutoModel``) with ``adapterhub.init``
    applied (done here if not); ``tokenizer``: its tokenizer."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        config: EngineConfig | None = None,
        adapters: Mapping[str, str | AdapterSource] | None = None,
        fusions: Sequence[str | Path] = (),
    ) -> None:
        from adapterhub.api.model import init

        self.config = config or EngineConfig()
        self.model = init(model).eval()
        self.tokenizer = tokenizer
        self.metrics = Metrics()
        self.max_length = self.config.max_length or encoding.model_max_length(model, tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.eos_id = getattr(tokenizer, "eos_token_id", None)
        self.pad_id = int(pad if pad is not None else (self.eos_id if self.eos_id is not None else 0))
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="adapterhub-model")
        self._io_threads = ThreadPoolExecutor(4, thread_name_prefix="adapterhub-fetch")
        self.registry = AdapterRegistry(
            self.model,
            max_loaded=self.config.max_loaded,
            model_executor=self._model_thread,
            io_executor=self._io_threads,
            hub_url=self.config.hub_url,
            on_event=self._adapter_event,
        )
        for name, source in (adapters or {}).items():
            self.registry.register(name, source)
        self.fusions = FusionRegistry(self.model, model_executor=self._model_thread)
        for directory in fusions:
            self.add_fusion(directory)
        self.scheduler: Scheduler | None = None

    def _adapter_event(self, kind: str, name: str) -> None:
        if kind == "evict":
            self.fusions.forget_adapter(name)
        self.metrics.adapter_event(kind, len(self.registry.loaded))

    def add_fusion(self, directory: str | Path) -> str:
        """Serve ``Fuse(...)`` of the fusion saved in ``directory``; adapters saved alongside it become servable
        unless a source of that name is known already. Returns the fusion's name ``"a,b,c"``."""
        source = read_fusion_source(directory)
        for name, adapter_dir in source.adapter_dirs.items():
            if name not in self.registry.sources:
                self.registry.register(name, str(adapter_dir))
        self.fusions.register(source)
        return source.name

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        *,
        adapters: Mapping[str, str | AdapterSource] | None = None,
        config: EngineConfig | None = None,
        fusions: Sequence[str | Path] = (),
        device: str | None = None,
    ) -> ServingEngine:
        """Load the base model (``AutoModel``) and tokenizer of ``model_name_or_path``."""
        import transformers

        model = transformers.AutoModel.from_pretrained(model_name_or_path)
        if device:
            model = model.to(device)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_name_or_path)
        return cls(model, tokenizer, config=config, adapters=adapters, fusions=fusions)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the batching loop (call inside the event loop that will serve requests)."""
        if self.scheduler is None:
            self.scheduler = Scheduler(
                self._run_works,
                max_batch_rows=self.config.max_batch_rows,
                max_wait_ms=self.config.max_wait_ms,
                max_queue_rows=self.config.max_queue_rows,
                metrics=self.metrics,
            )
        self.scheduler.start()

    async def shutdown(self) -> None:
        """Refuse new requests, answer every queued one, then stop the model thread."""
        if self.scheduler is not None:
            await self.scheduler.drain()
        await asyncio.get_running_loop().run_in_executor(None, self._model_thread.shutdown, True)
        self._io_threads.shutdown(wait=False)

    async def _run_works(self, works: Sequence[Work]) -> list[Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, run_batch, self.model, works, self.pad_id)

    def _scheduler(self) -> Scheduler:
        if self.scheduler is None:
            raise RuntimeError("ServingEngine.start() was not called.")
        return self.scheduler

    # ------------------------------------------------------------------ adapters
    def adapters(self) -> list[dict[str, Any]]:
        return self.registry.describe()

    async def add_adapter(
        self, name: str, source: str | AdapterSource, *, load: bool = False
    ) -> dict[str, Any]:
        """Make ``name`` servable from ``source`` (replacing an earlier source of that name); ``load=True`` loads
        it now (a failing source raises ``SourceError`` and leaves the name unknown)."""
        if name in self.registry.sources:
            await self.registry.unregister(name)
        self.registry.register(name, source)
        if load:
            try:
                return await self.load(name)
            except Exception:
                await self.registry.unregister(name)
                raise
        return {"name": name, "source": str(self.registry.sources[name]), "loaded": False}

    async def load(self, name: str) -> dict[str, Any]:
        """Load ``name`` now if it is not in memory (counts as a use for the LRU order)."""
        entry = (await self.registry.acquire([name]))[name]
        self.registry.release([name])
        return entry.describe()

    async def remove_adapter(self, name: str) -> None:
        await self.registry.unregister(name)

    # ------------------------------------------------------------------ requests
    def _setup_of(self, adapter: str | None, setup: str | None, *, required: bool = True) -> Setup | None:
        if adapter is not None and setup is not None:
            raise ConfigError('Give either "adapter" or "setup", not both.')
        if adapter is None and setup is None:
            if required:
                raise ConfigError('Name the adapter ("adapter": NAME) or the setup ("setup": "Stack(a, b)").')
            return None
        parsed = parse_request_setup(adapter if adapter is not None else setup)  # type: ignore[arg-type]
        self.registry.check_known(setup_names(parsed))
        self.fusions.check_known(parsed)
        return parsed

    async def _acquire(self, setup: Setup | None) -> tuple[dict[str, LoadedAdapter], Any]:
        """Pin (and load) the setup's adapters and fusions: ``(adapters by name, head of its final Fuse)``."""
        names = setup_names(setup)
        loaded = await self.registry.acquire(names) if names else {}
        try:
            return loaded, await self.fusions.ensure(setup)
        except BaseException:
            self.registry.release(names)
            raise

    async def _queued(self, work_for: Any, setup: Setup | None, rows_hint: int) -> list[Any]:
        """Acquire the setup's adapters, build the work (``work_for(loaded)``), queue it and await the result."""
        scheduler = self._scheduler()
        scheduler.check_room(rows_hint)
        names = setup_names(setup)
        loaded, fusion_head = await self._acquire(setup)
        try:
            return await scheduler.submit(work_for(loaded, fusion_head))
        finally:
            if names:
                self.registry.release(names)

    async def predict(
        self,
        inputs: Sequence[Any],
        *,
        adapter: str | None = None,
        setup: str | None = None,
        truncate: bool = False,
        logits: bool = False,
    ) -> dict[str, Any]:
        """One prediction per input from the head of the setup's last adapter (see ``predictions``)."""
        parsed = self._setup_of(adapter, setup)
        assert parsed is not None

        def work_for(loaded: dict[str, LoadedAdapter], fusion_head: Any) -> Work:
            last = parsed if isinstance(parsed, str) else parsed.last()
            head = fusion_head if fusion_head is not None else loaded[last].head
            check_predicts(head, f"Adapter {last!r}" if fusion_head is None else f"Fusion of {parsed!r}")
            encoded = encoding.encode(
                self.tokenizer,
                inputs,
                head_type=head.head_type,
                max_length=self.max_length,
                truncate=truncate,
            )
            return Work("predict", parsed, encoded, head=head, with_logits=logits)

        predictions = await self._queued(work_for, parsed, len(inputs))
        key = "adapter" if adapter is not None else "setup"
        return {key: _describe(parsed), "predictions": predictions}

    async def embed(
        self,
        inputs: Sequence[Any],
        *,
        adapter: str | None = None,
        setup: str | None = None,
        pooling: str = "mean",
        truncate: bool = False,
    ) -> dict[str, Any]:
        """One pooled vector (``mean`` over the mask, ``first`` or ``last`` token) of the last hidden states per
        input, under the adapter or setup (neither: the base model)."""
        if pooling not in POOLINGS:
            raise ConfigError(f"Unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}.")
        parsed = self._setup_of(adapter, setup, required=False)

        def work_for(loaded: dict[str, LoadedAdapter], fusion_head: Any) -> Work:
            encoded = encoding.encode(
                self.tokenizer, inputs, head_type=None, max_length=self.max_length, truncate=truncate
            )
            return Work("embed", parsed, encoded, pooling=pooling)

        vectors = await self._queued(work_for, parsed, len(inputs))
        return {
            "adapter": None if parsed is None else _describe(parsed),
            "embeddings": [v["embedding"] for v in vectors],
        }

    async def generate(
        self,
        prompts: Sequence[str],
        *,
        adapter: str,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        truncate: bool = False,
    ) -> dict[str, Any]:
        """Continue each prompt with the adapter's causal-LM head (one pass per step for this request's prompts;
        generation requests do not share passes with other requests)."""
        token_ids: list[list[int]] = [[] for _ in prompts]
        stream = self.generate_stream(
            prompts, adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            seed=seed, truncate=truncate,
        )  # fmt: skip
        async for step in stream:
            for row, token in enumerate(step):
                if token is not None:
                    token_ids[row].append(token)
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in token_ids]
        return {"adapter": adapter, "texts": texts, "token_ids": token_ids}

    async def generate_stream(
        self,
        prompts: Sequence[str],
        *,
        adapter: str,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        truncate: bool = False,
    ) -> AsyncGenerator[list[int | None], None]:
        """Yield each decoding step's new token per prompt (None once that prompt has stopped) as the model thread
        produces it. Errors (unknown adapter, no causal-LM head, too long) raise at the first ``__anext__``;
        closing the iterator early stops the generation."""
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
        parsed = self._setup_of(adapter, None)
        names = setup_names(parsed)
        self._scheduler().check_room(len(prompts))
        loaded, fusion_head = await self._acquire(parsed)
        stop = threading.Event()
        try:
            last = parsed if isinstance(parsed, str) else parsed.last()  # type: ignore[union-attr]
            head = fusion_head if fusion_head is not None else loaded[last].head
            check_generates(head, f"Adapter {last!r}")
            limit = None if self.max_length is None else self.max_length - max_new_tokens
            if limit is not None and limit < 1:
                raise ConfigError(
                    f"max_new_tokens {max_new_tokens} leaves no room for a prompt ({self.max_length})."
                )
            encoded = encoding.encode(
                self.tokenizer, prompts, head_type=None, max_length=limit, truncate=truncate
            )
            loop = asyncio.get_running_loop()
            steps: asyncio.Queue[Any] = asyncio.Queue()

            def on_step(step: list[int | None]) -> None:  # on the model thread
                loop.call_soon_threadsafe(steps.put_nowait, step)

            done = loop.run_in_executor(
                self._model_thread,
                lambda: generate_ids(
                    self.model, head, parsed, encoded.input_ids, pad_id=self.pad_id, eos_id=self.eos_id,
                    max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                    on_step=on_step, cancelled=stop.is_set,
                ),
            )  # fmt: skip
            done.add_done_callback(lambda _: steps.put_nowait(None))  # after every step (FIFO on the loop)
            while (step := await steps.get()) is not None:
                yield step
            await done  # its exception, if it failed
        finally:
            stop.set()
            self.registry.release(names)

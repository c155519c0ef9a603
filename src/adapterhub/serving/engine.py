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
    async for step in engine.generate_stream(["Once"], adapter="lm"):  # per new token: [id or None per prompt]
        ...
    run = await engine.open_generation([ids], adapter="lm", n=2, temperature=0.7, seed=1)  # the OpenAI routes'
    async for choice, token in run.events():                # token None: that choice ended; leaving cancels
        ...
    await engine.add_adapter("new", "dir/or/hub-id")        # known from now on, loaded on first use
    await engine.load("new")                                # load now (e.g. Ray's multiplexed model loading)
    await engine.remove_adapter("new")                      # forget and evict
    engine.add_composition("both", "Stack(lang, task)")     # OpenAI requests may then name model="both"
    engine.adapters()                                       # known adapters, loaded ones with head/labels/memory
    engine.metrics.render()                                 # Prometheus text
    await engine.shutdown()                                 # finishes queued requests

Errors (``adapterhub.errors`` subclasses; ``app.py`` maps them to HTTP): ``UnknownAdapterError`` (404, names close
matches), ``ConfigError`` / ``InputTooLongError`` / ``ContextLengthError`` (422; 400 on the OpenAI routes),
``QueueFullError`` (429, ``retry_after``), ``SourceError`` (502, the adapter's source failed to load; other
requests are unaffected), ``ShuttingDownError`` (503).

Threads: the event loop does the bookkeeping and tokenisation; one model thread runs every forward pass, load
and eviction (so the model never changes during a pass); a served decoder's ``GenerationEngine`` steps in its own
thread, and the model thread's jobs wait for the current step (``engine.exclusive()``); an I/O pool fetches
adapters from the hub.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from adapterhub.errors import ConfigError
from adapterhub.serving import encoding
from adapterhub.serving.compositions import CompositionRegistry
from adapterhub.serving.fusions import FusionRegistry, read_fusion_source
from adapterhub.serving.gen_service import (
    ContextLengthError,
    GenerationRun,
    GenerationService,
    GuardedExecutor,
    is_causal_lm,
)
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
    default); ``max_num_seqs`` / ``max_batch_tokens``: sequences decoding together and new tokens per step of the
    generation engine (decoders only; ``max_queue_rows`` also bounds its waiting sequences); ``prefill_chunk``,
    ``max_cache_tokens``, ``preempt``: the generation engine's chunked prefill, cache budget and preemption (None /
    False: its defaults; see ``GenerationEngine``); ``packed``: its packed steps (all sequences in one row): None
    (the default) packs wherever exact and supported and runs rows elsewhere (logged once), True packs every step
    (refusing what cannot pack), False runs one row per sequence;
    ``gc_freeze``: when the server has started (model loaded, ``--preload`` adapters loaded), ``gc.collect()`` then
    ``gc.freeze()``, so the cyclic collector never scans the objects alive then again (off here; ``serve-model``
    turns it on unless ``--no-gc-freeze``)."""

    max_loaded: int = 8
    max_batch_rows: int = 64
    max_wait_ms: float = 5.0
    max_queue_rows: int = 4096
    max_length: int | None = None
    hub_url: str | None = None
    max_num_seqs: int = 16
    max_batch_tokens: int = 2048
    prefill_chunk: int | None = None
    max_cache_tokens: int | None = None
    preempt: bool = False
    cache_block: int = 16
    packed: bool | None = None
    gc_freeze: bool = False

    def __post_init__(self) -> None:
        for name in (
            "max_loaded",
            "max_batch_rows",
            "max_queue_rows",
            "max_num_seqs",
            "max_batch_tokens",
            "cache_block",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.max_wait_ms, (int, float)) or self.max_wait_ms < 0:
            raise ConfigError(f"max_wait_ms must be a number >= 0, got {self.max_wait_ms!r}.")
        for name in ("max_length", "prefill_chunk", "max_cache_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}.")
        for name in ("preempt", "gc_freeze"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if self.packed is not None and not isinstance(self.packed, bool):
            raise ConfigError(
                f"packed must be True, False or None (packed wherever exact and supported), got {self.packed!r}."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"Unknown engine option(s) {unknown}; valid: {', '.join(sorted(valid))}.")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decoder_only(config: Any) -> bool:
    """A config of a decoder-only language model (causal LM classes only, no masked-LM class, not seq2seq)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = config.model_type
    return (
        not getattr(config, "is_encoder_decoder", False)
        and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


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
        compositions: Mapping[str, str] | None = None,
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
        self._model_thread = GuardedExecutor("adapterhub-model")
        self.generation: GenerationService | None = None
        if is_causal_lm(self.model):  # one generation engine; loads and passes never overlap its steps
            self.generation = GenerationService(
                self.model, tokenizer, max_num_seqs=self.config.max_num_seqs,
                max_batch_tokens=self.config.max_batch_tokens, max_waiting=self.config.max_queue_rows,
                max_length=self.config.max_length, metrics=self.metrics.generation,
                prefill_chunk=self.config.prefill_chunk,
                max_cache_tokens=self.config.max_cache_tokens, preempt=self.config.preempt,
                cache_block=self.config.cache_block, packed=self.config.packed,
            )  # fmt: skip
            self._model_thread.guard = self.generation.engine.exclusive
        self._adapter_tokenizers: dict[tuple[str, str, str | None], Any] = {}
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
        self.compositions = CompositionRegistry()
        for name, text in (compositions or {}).items():
            self.add_composition(name, text)
        self.scheduler: Scheduler | None = None

    def _adapter_event(self, kind: str, name: str) -> None:
        if kind == "evict":
            self.fusions.forget_adapter(name)
        self.metrics.adapter_event(kind, len(self.registry.loaded), name)

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
        causal_lm: bool | None = None,
        compositions: Mapping[str, str] | None = None,
    ) -> ServingEngine:
        """Load the base model and tokenizer of ``model_name_or_path`` (a folder, a hub name or a packaged model's
        name such as ``smollm2``: :func:`adapterhub.data.packaged.packaged_model_path`): ``AutoModelForCausalLM``
        for a decoder-only model (``causal_lm`` None: decided by its config), so that it generates, else
        ``AutoModel``."""
        import transformers

        from adapterhub.data.packaged import packaged_model_path

        packaged = packaged_model_path(model_name_or_path)
        if packaged is not None:
            model_name_or_path = str(packaged)
        if causal_lm is None:
            causal_lm = decoder_only(transformers.AutoConfig.from_pretrained(model_name_or_path))
        factory: Any = transformers.AutoModelForCausalLM if causal_lm else transformers.AutoModel
        model = factory.from_pretrained(model_name_or_path)
        if device:
            model = model.to(device)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_name_or_path)
        return cls(
            model, tokenizer, config=config, adapters=adapters, fusions=fusions, compositions=compositions
        )

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the batching loop and the generation engine's thread (call inside the event loop that will serve
        requests)."""
        if self.generation is not None:
            self.generation.start()
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
        """Refuse new requests, answer every queued one (and finish every generation), then stop the threads."""
        if self.scheduler is not None:
            await self.scheduler.drain()
        if self.generation is not None:
            await self.generation.shutdown()
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
        if name in self.compositions.setups or name == self.model_id:
            raise ConfigError(
                f"The name {name!r} is taken by a composition or the base model; choose another."
            )
        if name in self.registry.sources:
            await self._unregister(name)
        self.registry.register(name, source)
        if load:
            try:
                return await self.load(name)
            except Exception:
                await self._unregister(name)
                raise
        return {"name": name, "source": str(self.registry.sources[name]), "loaded": False}

    async def load(self, name: str) -> dict[str, Any]:
        """Load ``name`` now if it is not in memory (counts as a use for the LRU order)."""
        entry = (await self.registry.acquire([name]))[name]
        self.registry.release([name])
        return entry.describe()

    def add_composition(self, name: str, setup: str) -> dict[str, Any]:
        """Serve ``setup`` (e.g. ``"Stack(a, b)"``) of known adapters under ``name`` (see ``compositions``)."""
        taken = {a: "an adapter" for a in self.registry.sources}
        taken[self.model_id] = "the base model"
        parsed = self.compositions.register(name, setup, taken=taken, known=list(self.registry.sources))
        return {"name": name, "setup": repr(parsed), "adapters": setup_names(parsed)}

    async def remove_adapter(self, name: str) -> None:
        await self._unregister(name)

    async def _unregister(self, name: str) -> None:
        """Forget ``name``: evict it and drop everything derived from its weights (tokenizers)."""
        await self.registry.unregister(name)
        for key in [k for k in self._adapter_tokenizers if k[0] == name]:
            del self._adapter_tokenizers[key]

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

    # ------------------------------------------------------------------ generation
    def _generation(self) -> GenerationService:
        if self.generation is None:
            raise ConfigError(
                f"This server's model ({type(self.model).__name__}) has no LM head, so it does not generate; serve "
                "a decoder loaded with AutoModelForCausalLM (serve-model does so for decoder-only models)."
            )
        return self.generation

    @property
    def model_id(self) -> str:
        """The base model's id (``model`` of OpenAI requests that ask for no adapter)."""
        config: Any = self.model.config
        return str(getattr(config, "name_or_path", "") or config.model_type)

    def tokenizer_for(self, adapter: str | None) -> Any:
        """The adapter's own tokenizer when its directory holds one (``tokenizer_config.json``), else the base's."""
        source = None if adapter is None else self.registry.sources.get(adapter)
        if (
            source is None
            or source.kind != "dir"
            or not (Path(source.location) / "tokenizer_config.json").is_file()
        ):
            return self.tokenizer
        key = (adapter, str(source), self.registry.hashes.get(adapter))  # a name reloaded never reuses it
        if key not in self._adapter_tokenizers:
            import transformers

            self._adapter_tokenizers[key] = transformers.AutoTokenizer.from_pretrained(source.location)
        return self._adapter_tokenizers[key]

    def encode_prompts(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int | None,
        truncate: bool = False,
        tokenizer: Any = None,
    ) -> list[list[int]]:
        """Token ids of each prompt; ``truncate`` keeps the start of a prompt that leaves no room for
        ``max_new_tokens`` (else ``ContextLengthError`` from ``open_generation``)."""
        if not prompts:
            raise ConfigError("prompt is empty; send at least one prompt.")
        context = self._generation().context
        limit = None
        if truncate and context is not None:
            limit = context - (max_new_tokens or 1)
            if limit < 1:
                raise ContextLengthError(
                    f"max_new_tokens {max_new_tokens} leaves no room for a prompt (context {context})."
                )
        encoded = encoding.encode(
            tokenizer or self.tokenizer, prompts, head_type=None, max_length=limit, truncate=truncate
        )
        return [list(ids) for ids in encoded.input_ids]

    async def open_generation(
        self,
        prompt_ids: Sequence[Sequence[int]],
        *,
        adapter: str | None = None,
        max_new_tokens: int | None = 16,
        n: int = 1,
        tokenizer: Any = None,
        **sampling: Any,
    ) -> GenerationRun:
        """Pin (and load) the adapter, check every prompt against the context and queue ``n`` sequences per prompt
        in the generation engine; the adapter stays pinned until the run ends. ``adapter`` None: the base model
        with its own LM head; an adapter saved with a causal_lm head generates with that head."""
        arrived = time.perf_counter()  # time to first token counts the adapter's load too
        service = self._generation()
        if any(not ids for ids in prompt_ids):
            raise ConfigError("A prompt is empty; send at least one token of text.")
        parsed = self.compositions.get(adapter) if adapter is not None else None
        if parsed is None:
            parsed = self._setup_of(adapter, None, required=False)
            if parsed is not None and not isinstance(parsed, str):
                raise ConfigError(
                    f"Generation runs an adapter or a composition by name (serve-model --composition NAME=SETUP "
                    f"or POST /v1/compositions), not the setup {parsed!r}."
                )
        else:
            self.registry.check_known(setup_names(parsed))
        new_tokens = service.max_new_tokens_for(prompt_ids, max_new_tokens)
        names = setup_names(parsed)
        loaded = await self.registry.acquire(names) if names else {}
        last = None if parsed is None else parsed if isinstance(parsed, str) else parsed.last()
        head = None if last is None else loaded[last].head
        if head is not None and head.head_type != "causal_lm":
            self.registry.release(names)
            raise ConfigError(
                f"Adapter {last!r} has a {head.head_type} head; generation serves adapters with no head (the "
                "model's LM head) or a causal_lm head."
            )
        return service.open(
            prompt_ids, adapter=parsed, head=head, n=n, max_new_tokens=new_tokens,
            tokenizer=tokenizer or self.tokenizer, sampling=sampling, on_end=lambda: self.registry.release(names),
            model=self.model_id if adapter is None else adapter, arrived=arrived,
        )  # fmt: skip

    async def generate(
        self,
        prompts: Sequence[str],
        *,
        adapter: str | None = None,
        max_new_tokens: int = 32,
        truncate: bool = False,
        **sampling: Any,
    ) -> dict[str, Any]:
        """Continue each prompt (greedy unless ``sampling`` says otherwise: ``temperature``, ``top_k``, ``top_p``,
        ``seed``, ``stop``, ``repetition_penalty``, ``presence_penalty``, ``frequency_penalty``); the requests of all clients decode together in the generation engine."""
        ids = self.encode_prompts(prompts, max_new_tokens=max_new_tokens, truncate=truncate)
        run = await self.open_generation(ids, adapter=adapter, max_new_tokens=max_new_tokens, **sampling)
        done = await run.completions()
        texts = [self.tokenizer.decode(c.ids, skip_special_tokens=True) for c in done]
        return {
            "adapter": adapter,
            "texts": texts,
            "token_ids": [c.ids for c in done],
            "finish_reasons": [c.finish_reason for c in done],
        }

    async def generate_stream(
        self,
        prompts: Sequence[str],
        *,
        adapter: str | None = None,
        max_new_tokens: int = 32,
        truncate: bool = False,
        **sampling: Any,
    ) -> AsyncGenerator[list[int | None], None]:
        """Yield a list per new token: that prompt's token, None at the other prompts. Errors raise at the first
        ``__anext__``; closing the iterator early cancels the generation (freed at the next step)."""
        ids = self.encode_prompts(prompts, max_new_tokens=max_new_tokens, truncate=truncate)
        run = await self.open_generation(ids, adapter=adapter, max_new_tokens=max_new_tokens, **sampling)
        events = run.events()
        try:
            async for index, token in events:
                if token is not None:
                    yield [token if i == index else None for i in range(len(prompts))]
        finally:
            await events.aclose()

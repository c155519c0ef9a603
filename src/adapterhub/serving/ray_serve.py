"""``adapterhub serve-model --ray [--replicas N]``: the serving engine as a Ray Serve application.

Two deployments:

- ``EngineReplica`` (``--replicas N``): each replica holds one ``ServingEngine``, i.e. the base model once and at
  most ``max_loaded`` adapters, and batches the requests it gets exactly as the single-process server does (rows
  of different adapters in one forward pass). Adapters are Ray *multiplexed models*: a request carries its adapter
  (or its setup string, e.g. ``Stack('lang', 'task')``) as the multiplexed model id; the replica's loader, wrapped
  in ``serve.multiplexed(max_num_models_per_replica=max_loaded)``, loads the setup's adapters into the engine, and
  Ray's router sends the next request for that id to a replica that already holds it (else to the replica holding
  the fewest, which then loads it). Ray's per-replica LRU and the engine's both hold ``max_loaded`` entries.
- ``Gateway`` (one replica): the HTTP front with the same JSON bodies as the single-process server
  (``POST /v1/predict``, ``/v1/embed``, ``/v1/generate``, ``GET /v1/adapters``, ``GET /health``). It reads the
  adapter from the body and calls the replicas with ``multiplexed_model_id`` set to it, so clients need no Ray
  header. Each answer names the replica that computed it in the ``X-Adapterhub-Replica`` header and that
  replica's loaded adapters in ``X-Adapterhub-Replica-Adapters`` (comma-separated).

- OpenAI routes (``POST /v1/completions``, ``/v1/chat/completions``, ``GET /v1/models[/ID]``): the gateway takes
  ``model`` from the body (an adapter's name is the multiplexed id; the base model's id, asked of a replica once,
  is none) and hands the raw body to a replica, which runs it through the single-process app (``create_app``
  over its own engine, called in process by ``asgi_calls``), so answers and errors are those of the server
  without ``--ray``. ``stream: true`` goes through Ray's streaming handle (``openai_stream``, an async generator
  on the replica): the gateway passes each server-sent event on as the replica's app sends it, and a client
  that goes away cancels the replica's call, which disconnects its app and so cancels the generation.
- Run-time changes: vLLM's ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``, ``POST /v1/adapters``,
  ``DELETE /v1/adapters/NAME``, ``POST /v1/compositions``, ``DELETE /v1/compositions/NAME`` (bearer token as the
  single-process server's, checked once by the gateway): the gateway broadcasts them to every replica, all or
  none (``replica_fanout``: each replica answers with the single-process route; a replica that fails makes the
  call fail naming it, and the others are rolled back). Each change that every replica applied is kept on the
  ``ray_board.MetricsBoard`` actor, and a replica that starts later applies them, in order, before serving.
  ``--composition NAME=SETUP`` compositions are given to every replica at start.
- ``GET /metrics``: every replica pushes its own Prometheus text to that ``MetricsBoard`` actor every
  ``METRICS_PUSH_S`` (so the figures lag by at most that); the gateway merges them (``metrics_merge``), each
  sample labelled ``replica="ID"`` (sum over it in PromQL for the deployment; a replica silent for
  ``METRICS_STALE_S`` is dropped). The gateway's own HTTP counts are not included.

Errors keep the single-process server's statuses (404 unknown adapter, 422 bad input, 429 queue full, 502 source failed, 503 shutting down):
the replica turns an ``AdapterHubError`` into ``{"error": {"status", "detail", "headers"}}``, so no exception
has to survive Ray's pickling.

Adapter sources are given to every replica and loaded there: directories must exist on every node that runs a
replica (hub identifiers and ``hf:`` sources work anywhere). Only ``--ray`` imports this module (and Ray).
"""

# No ``from __future__ import annotations``: Ray's ingress rebuilds the route functions, and FastAPI must see the
# body classes themselves (string annotations would turn the bodies into query parameters).
import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from adapterhub.errors import AdapterHubError, ConfigError
from adapterhub.serving.app import EmbedBody, GenerateBody, PredictBody, create_app, freeze_startup_objects
from adapterhub.serving.asgi_calls import call_app, stream_app
from adapterhub.serving.compositions import CompositionRegistry
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.serving.metrics_merge import merge_expositions
from adapterhub.serving.openai_errors import error_response
from adapterhub.serving.ray_board import APP_NAME, METRICS_PUSH_S, metrics_board
from adapterhub.serving.registry import UnknownAdapterError
from adapterhub.serving.replica_fanout import (
    ReplicaAnswer,
    answer_change,
    apply_change,
    apply_everywhere,
    change_target,
)
from adapterhub.serving.scheduler import QueueFullError, ShuttingDownError
from adapterhub.serving.setups import parse_request_setup
from adapterhub.serving.sources import AdapterSource, SourceError
from adapterhub.spec.composition import setup_names

REPLICA_HEADER = "X-Adapterhub-Replica"
REPLICA_ADAPTERS_HEADER = "X-Adapterhub-Replica-Adapters"

# The first class an error is an instance of gives its HTTP status (AdapterHubError last: the rest are 422).
_STATUSES: tuple[tuple[type[BaseException], int], ...] = (
    (UnknownAdapterError, 404),
    (QueueFullError, 429),
    (SourceError, 502),
    (ShuttingDownError, 503),
    (AdapterHubError, 422),
)


def error_payload(error: AdapterHubError) -> dict[str, Any]:
    """``{"status", "detail", "headers"}`` of ``error`` as the single-process server would answer it."""
    status = next(code for kind, code in _STATUSES if isinstance(error, kind))
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, QueueFullError) else {}
    return {"status": status, "detail": str(error), "headers": headers}


def model_id_of(adapter: str | None, setup: str | None) -> str:
    """The multiplexed model id of a request: its adapter name, or its setup in normal form ("" for neither)."""
    if adapter is not None:
        return adapter
    if setup is not None:
        parsed = parse_request_setup(setup)
        return parsed if isinstance(parsed, str) else repr(parsed)
    return ""


@serve.deployment
class EngineReplica:
    """One engine per replica; adapters are Ray multiplexed models (see the module docstring)."""

    async def __init__(
        self,
        model: str,
        adapters: Mapping[str, Any],
        config: Mapping[str, Any],
        device: str | None,
        fusions: Sequence[str],
        compositions: Mapping[str, str] | None = None,
    ) -> None:
        self.engine = ServingEngine.from_pretrained(
            model,
            adapters=dict(adapters),
            config=EngineConfig.from_dict(config),
            fusions=fusions,
            compositions=compositions,
            device=device,
        )
        await self.engine.start()
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.board = metrics_board()
        for kind, name, state in await self.board.changes.remote():  # adapters load on first use
            await apply_change(self.engine, kind, name, state, load=False)
        if self.engine.config.gc_freeze:  # this replica has started: as create_app's lifespan does
            freeze_startup_objects()

        async def load(model_id: str) -> tuple[str, ...]:
            """Load every adapter of the setup ``model_id`` (or of the composition it names) into this replica's
            engine."""
            setup = self.engine.compositions.get(model_id) or parse_request_setup(model_id)
            names = tuple(setup_names(setup))
            for name in names:
                await self.engine.load(name)
            return names

        # Wrapped here (not as a decorated method) because the LRU size comes from the config.
        self._hold: Callable[[str], Awaitable[tuple[str, ...]]] = serve.multiplexed(
            max_num_models_per_replica=self.engine.config.max_loaded
        )(load)
        # The single-process routes over this replica's engine, called in process by ``openai`` (the OpenAI
        # routes then answer exactly as without --ray); the engine was started above, so no lifespan runs.
        self.app = create_app(self.engine)
        self._pushing = asyncio.get_running_loop().create_task(self._push_metrics())

    async def _push_metrics(self) -> None:
        """Every ``METRICS_PUSH_S``: this replica's ``/metrics`` text to the board (until the replica stops)."""
        while True:
            await self.board.put.remote(self.replica, self.engine.metrics.render())
            await asyncio.sleep(METRICS_PUSH_S)

    def model_id(self) -> str:
        """The base model's id (what ``model`` names for no adapter on the OpenAI routes)."""
        return self.engine.model_id

    async def openai(self, method: str, path: str, body: bytes) -> dict[str, Any]:
        """An OpenAI route (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models[/ID]``) answered by the
        single-process app over this replica's engine: ``{"status", "headers", "body", "replica", "loaded"}``.
        The request's adapter (its multiplexed id) is held first; a failing load is left to the route, which
        answers it in OpenAI's error shape."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            with contextlib.suppress(AdapterHubError):
                await self._hold(model_id)
        status, headers, content = await call_app(self.app, method, path, body)
        return {"status": status, "headers": headers, "body": content, "replica": self.replica,
                "loaded": self.loaded()}  # fmt: skip

    async def openai_stream(
        self, method: str, path: str, body: bytes
    ) -> AsyncIterator[dict[str, Any] | bytes]:
        """A streamed OpenAI request (``"stream": true``) through the single-process app: first ``{"status",
        "headers", "replica", "loaded"}``, then each body part (server-sent events) as the app sends it. Closing
        it early (Ray cancels it when the gateway's client goes away) disconnects the app, which cancels the
        generation."""
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            with contextlib.suppress(AdapterHubError):
                await self._hold(model_id)
        parts = stream_app(self.app, method, path, body)
        try:
            async for part in parts:
                if isinstance(part, dict):
                    part = {**part, "replica": self.replica, "loaded": self.loaded()}
                yield part
        finally:
            await parts.aclose()

    async def change(self, method: str, path: str, body: bytes) -> ReplicaAnswer:
        """A run-time change (adapter or composition) on this replica's engine, by the single-process route
        (``replica_fanout`` sends it to every replica), with the target's state here before and after."""
        return await answer_change(self.app, self.engine, self.replica, method, path, body)

    async def restore(self, kind: str, name: str, previous: Mapping[str, str | None]) -> None:
        """Undo a change of the target ``(kind, name)`` on this replica if it is one of ``previous`` (replica ->
        the target's state before; None: not served before)."""
        if self.replica in previous:
            await apply_change(self.engine, kind, name, previous[self.replica], load=True)

    def state(self) -> dict[str, Any]:
        """This replica's id, the adapters it serves (name -> source), its compositions (name -> setup) and the
        adapters loaded now."""
        sources = {name: str(source) for name, source in self.engine.registry.sources.items()}
        compositions = dict(self.engine.compositions.texts)
        return {
            "replica": self.replica,
            "sources": sources,
            "compositions": compositions,
            "loaded": self.loaded(),
        }

    def loaded(self) -> list[str]:
        """Adapters in this replica's engine now."""
        return sorted(self.engine.registry.loaded)

    async def _answer(self, run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        try:
            model_id = serve.get_multiplexed_model_id()
            if model_id:
                await self._hold(model_id)
            result = await run()
        except AdapterHubError as error:
            return {"error": error_payload(error), "replica": self.replica, "loaded": self.loaded()}
        return {"result": result, "replica": self.replica, "loaded": self.loaded()}

    async def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer(
            lambda: self.engine.predict(
                body["inputs"],
                adapter=body.get("adapter"),
                setup=body.get("setup"),
                truncate=body.get("truncate", False),
                logits=body.get("logits", False),
            )
        )

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer(
            lambda: self.engine.embed(
                body["inputs"],
                adapter=body.get("adapter"),
                setup=body.get("setup"),
                pooling=body.get("pooling", "mean"),
                truncate=body.get("truncate", False),
            )
        )

    async def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._answer(
            lambda: self.engine.generate(
                body["inputs"],
                adapter=body["adapter"],
                max_new_tokens=body.get("max_new_tokens", 32),
                temperature=body.get("temperature", 0.0),
                top_k=body.get("top_k", 0),
                top_p=body.get("top_p", 1.0),
                seed=body.get("seed"),
                stop=body.get("stop"),
                truncate=body.get("truncate", False),
            )
        )

    def adapters(self) -> dict[str, Any]:
        """``GET /v1/adapters`` as the single-process server answers it, over this replica's engine."""
        engine = self.engine
        return {
            "result": {
                "adapters": engine.adapters(),
                "fusions": engine.fusions.describe(),
                "compositions": engine.compositions.describe(),
                "max_loaded": engine.config.max_loaded,
            }
        }


gateway_app = FastAPI(title="adapterhub serve-model (Ray Serve)", description=__doc__)


def _response(answer: dict[str, Any]) -> JSONResponse:
    headers = {}
    if "replica" in answer:
        headers = {REPLICA_HEADER: answer["replica"], REPLICA_ADAPTERS_HEADER: ",".join(answer["loaded"])}
    error = answer.get("error")
    if error is not None:
        return JSONResponse(
            {"detail": error["detail"]}, error["status"], headers={**error["headers"], **headers}
        )
    return JSONResponse(answer["result"], headers=headers)


def _forwarded(answer: dict[str, Any]) -> dict[str, str]:
    """The headers a replica's OpenAI answer keeps through the gateway, and the replica headers."""
    keep = {"content-type", "retry-after"}
    headers = {k.lower(): v for k, v in answer["headers"] if k.lower() in keep}
    return headers | {REPLICA_HEADER: answer["replica"], REPLICA_ADAPTERS_HEADER: ",".join(answer["loaded"])}


@serve.deployment
@serve.ingress(gateway_app)
class Gateway:
    """The HTTP front: the request's adapter becomes the multiplexed model id of the call to the replicas."""

    def __init__(self, replicas: DeploymentHandle, num_replicas: int, token: str | None = None) -> None:
        self.replicas = replicas
        self.num_replicas = num_replicas
        self.token = token
        self.started = time.time()
        self.base_id: str | None = None
        self.board = metrics_board()
        self.changing = asyncio.Lock()  # one run-time load/unload at a time

    async def _call(self, method: str, body: dict[str, Any]) -> JSONResponse:
        try:
            model_id = model_id_of(body.get("adapter"), body.get("setup"))
        except AdapterHubError as error:
            return _response({"error": error_payload(error)})
        handle = self.replicas.options(multiplexed_model_id=model_id) if model_id else self.replicas
        return _response(await getattr(handle, method).remote(body))

    @gateway_app.post("/v1/predict", summary="predictions of an adapter's (or setup's) head, one per input")
    async def predict(self, body: PredictBody) -> JSONResponse:
        return await self._call("predict", body.model_dump())

    @gateway_app.post("/v1/embed", summary="pooled last hidden states, one vector per input")
    async def embed(self, body: EmbedBody) -> JSONResponse:
        return await self._call("embed", body.model_dump())

    @gateway_app.post("/v1/generate", summary="continue prompts with an adapter's causal-LM head")
    async def generate(self, body: GenerateBody) -> JSONResponse:
        return await self._call("generate", body.model_dump())

    @gateway_app.get("/v1/adapters", summary="known adapters, as one replica has them loaded")
    async def list_adapters(self) -> JSONResponse:
        return _response(await self.replicas.adapters.remote())

    @gateway_app.post("/v1/adapters", summary="add an adapter by source on every replica")
    async def add_adapter(self, request: Request) -> Response:
        return await self._change(request)

    @gateway_app.delete("/v1/adapters/{name}", summary="forget and evict an adapter on every replica")
    async def delete_adapter(self, name: str, request: Request) -> Response:
        return await self._change(request)

    async def _openai(self, request: Request, model: str | None = None) -> Response:
        """Forward an OpenAI route to a replica: the body's ``model`` (an adapter) is the multiplexed id, the base
        model's id none. A body that is not JSON is forwarded as is, for the replica to answer 400."""
        raw = await request.body()
        stream = False
        if model is None and raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                stream = parsed.get("stream") is True
                model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
        if self.base_id is None:
            self.base_id = await self.replicas.model_id.remote()
        handle = self.replicas
        if model and model != self.base_id:
            handle = handle.options(multiplexed_model_id=model)
        if stream:
            return await self._stream(handle, request.method, request.url.path, raw)
        answer = await handle.openai.remote(request.method, request.url.path, raw)
        return Response(answer["body"], answer["status"], headers=_forwarded(answer))

    async def _stream(self, handle: DeploymentHandle, method: str, path: str, raw: bytes) -> Response:
        """A streamed request: the replica's parts passed on as they come (Ray's streaming handle); the client
        going away cancels the replica's call (and so its generation)."""
        parts = handle.options(stream=True).openai_stream.remote(method, path, raw)
        try:
            head = await parts.__anext__()
        except BaseException:
            parts.cancel()
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                async for part in parts:
                    yield part
            finally:  # the client went away (or the answer ended): nothing left to run on the replica
                parts.cancel()

        headers = _forwarded(head)
        kind = headers.pop("content-type", None) or "application/json"
        return StreamingResponse(body(), head["status"], headers=headers, media_type=kind)

    @gateway_app.post("/v1/completions", summary="OpenAI text completion on a replica (streamed or not)")
    async def completions(self, request: Request) -> Response:
        return await self._openai(request)

    @gateway_app.post("/v1/chat/completions", summary="OpenAI chat completion on a replica (streamed or not)")
    async def chat(self, request: Request) -> Response:
        return await self._openai(request)

    @gateway_app.get("/v1/models", summary="OpenAI model list: the base model and every adapter")
    async def models(self, request: Request) -> Response:
        return await self._openai(request, "")

    @gateway_app.get("/v1/models/{model:path}", summary="one model of the list")
    async def model(self, model: str, request: Request) -> Response:
        return await self._openai(request, "")

    async def _change(self, request: Request) -> Response:
        """A run-time change on every replica, all or none (``replica_fanout``); needs the token if one is set
        (a missing or wrong one answers 401 in the route's shape, as the single-process server does)."""
        given = (request.headers.get("authorization") or "").removeprefix("Bearer ").strip()
        if self.token is not None and not hmac.compare_digest(given.encode(), self.token.encode()):
            return error_response(
                request, 401, "This server needs its token: send Authorization: Bearer TOKEN."
            )
        raw, method, path = await request.body(), request.method, request.url.path
        states: list[str | None] = []

        async def broadcast(call: str, *args: Any) -> list[Any]:
            answers = list(await self.replicas.broadcast(call, *args).results_async(return_exceptions=True))
            if call == "change":  # the state every replica has after a change they all applied
                states[:] = [a.after for a in answers if isinstance(a, ReplicaAnswer)][:1]
            return answers

        async with self.changing:
            answer = await apply_everywhere(broadcast, method, path, raw)
            target = change_target(method, path, raw)
            if answer.status_code == 200 and target is not None and states:  # for replicas that start later
                await self.board.record.remote(*target, states[0])
        return answer

    @gateway_app.post("/v1/load_lora_adapter", summary="vLLM: add and load an adapter on every replica")
    async def load_lora(self, request: Request) -> Response:
        return await self._change(request)

    @gateway_app.post("/v1/unload_lora_adapter", summary="vLLM: forget and evict an adapter on every replica")
    async def unload_lora(self, request: Request) -> Response:
        return await self._change(request)

    @gateway_app.post("/v1/compositions", summary="serve a composition on every replica")
    async def add_composition(self, request: Request) -> Response:
        return await self._change(request)

    @gateway_app.delete("/v1/compositions/{name}", summary="stop serving a composition on every replica")
    async def delete_composition(self, name: str, request: Request) -> Response:
        return await self._change(request)

    @gateway_app.get("/metrics", summary="every replica's Prometheus metrics, labelled replica=ID")
    async def metrics(self) -> PlainTextResponse:
        texts = await self.board.get.remote()
        return PlainTextResponse(merge_expositions(texts), media_type="text/plain; version=0.0.4")

    @gateway_app.get("/health", summary="liveness")
    async def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "engine": "ray",
            "replicas": self.num_replicas,
            "up_s": time.time() - self.started,
        }


def build_app(
    model: str,
    adapters: Mapping[str, Any],
    config: EngineConfig,
    *,
    replicas: int = 1,
    replica_cpus: float = 1.0,
    replica_gpus: float = 0.0,
    device: str | None = None,
    fusions: Sequence[str] = (),
    compositions: Mapping[str, str] | None = None,
    max_ongoing_requests: int | None = None,
    token: str | None = None,
) -> Any:
    """The Ray Serve application (``Gateway`` bound to ``replicas`` ``EngineReplica`` replicas) for ``serve.run``.

    ``adapters``: name -> source (a string or ``AdapterSource``); ``fusions``: saved AdapterFusion directories
    (``--fusion``); ``compositions``: name -> setup served by every replica (``--composition``; checked here, a bad
    one raises ``ConfigError``); ``replica_cpus`` / ``replica_gpus``: Ray resources reserved per replica;
    ``device``: the replicas' torch device; ``max_ongoing_requests``: requests one replica takes at once (default
    ``2 * max_batch_rows``, so that a replica can fill its passes; beyond it Ray routes elsewhere); ``token``: the
    bearer token the run-time change routes need (None: none)."""
    if not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"replicas must be a positive integer, got {replicas!r}.")
    scratch = CompositionRegistry()  # refuse a bad composition here, not in every replica's start
    for name, text in (compositions or {}).items():
        scratch.register(name, text, taken={a: "an adapter" for a in adapters}, known=list(adapters))
    ongoing = max_ongoing_requests or 2 * config.max_batch_rows
    resources = {"num_cpus": replica_cpus, "num_gpus": replica_gpus}
    engine = EngineReplica.options(
        num_replicas=replicas, max_ongoing_requests=ongoing, ray_actor_options=resources
    ).bind(model, dict(adapters), config.to_dict(), device, list(fusions), dict(compositions or {}))
    return Gateway.options(max_ongoing_requests=max(ongoing * replicas, 100)).bind(engine, replicas, token)


def ray_init_options() -> dict[str, Any]:
    """Options for ``ray.init`` so that Ray's workers import this same adapterhub (its source directory first on
    their ``PYTHONPATH``), whether it is installed or run from a checkout."""
    import os

    from adapterhub import version

    source = str(Path(version.__file__).resolve().parents[1])
    paths = [source, *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != source]]
    return {"runtime_env": {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}}


def run(
    app: Any,
    *,
    host: str,
    port: int,
    address: str | None = None,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Start (or join, with ``address``) Ray, serve ``app`` on ``host:port`` until interrupted, then shut down."""
    import ray

    ray.init(address=address, include_dashboard=False, **ray_init_options())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        if ready is not None:
            ready(f"http://{host}:{port}")
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()


def _absolute(source: AdapterSource) -> AdapterSource:
    """Directories as absolute paths: Ray's workers need not share the driver's working directory."""
    if source.kind != "dir":
        return source
    return AdapterSource("dir", str(Path(source.location).expanduser().resolve()))


def serve_with_ray(
    model: str,
    adapters: Mapping[str, AdapterSource],
    config: EngineConfig,
    *,
    replicas: int,
    replica_cpus: float,
    replica_gpus: float,
    device: str | None,
    host: str,
    port: int,
    address: str | None,
    fusions: Sequence[str] = (),
    compositions: Mapping[str, str] | None = None,
    token: str | None = None,
    preload: bool = False,
) -> int:
    """``adapterhub serve-model --ray ...``: build the application and serve it until Ctrl-C."""
    if preload:
        raise ConfigError(
            "--preload is not available with --ray (preloading would have to reach every replica; adapters load "
            "on first use on the replica Ray routes them to). Drop it."
        )
    app = build_app(
        str(Path(model).resolve()) if Path(model).is_dir() else model,
        {name: _absolute(source) for name, source in adapters.items()},
        config,
        replicas=replicas,
        replica_cpus=replica_cpus,
        replica_gpus=replica_gpus,
        device=device,
        fusions=[str(Path(f).expanduser().resolve()) for f in fusions],
        compositions=compositions,
        token=token,
    )

    def ready(url: str) -> None:
        print(f"serving {model} with {len(adapters)} adapter(s) on {replicas} Ray Serve replica(s) at {url}")

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: run() shuts Serve and Ray down on its way out
        run(app, host=host, port=port, address=address, ready=ready)
    return 0

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
  over its own engine, called in process by ``call_app``), so answers and errors are those of the server
  without ``--ray``. ``stream: true`` is refused by the gateway with a 400 in OpenAI's error shape
  (``param: "stream"``): answers are not streamed through Ray here.
- ``GET /metrics``: every replica pushes its own Prometheus text to a ``MetricsBoard`` actor every
  ``METRICS_PUSH_S`` (so the figures lag by at most that); the gateway merges them (``metrics_merge``), each
  sample labelled ``replica="ID"`` (sum over it in PromQL for the deployment; a replica silent for
  ``METRICS_STALE_S`` is dropped). The gateway's own HTTP counts are not included.

Not served here (each would have to reach every replica): ``POST/DELETE /v1/adapters`` answer 501 saying so.
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
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from adapterhub.errors import AdapterHubError, ConfigError
from adapterhub.serving.app import EmbedBody, GenerateBody, PredictBody, create_app
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.serving.metrics_merge import merge_expositions
from adapterhub.serving.openai_errors import openai_error
from adapterhub.serving.registry import UnknownAdapterError
from adapterhub.serving.scheduler import QueueFullError, ShuttingDownError
from adapterhub.serving.setups import parse_request_setup
from adapterhub.serving.sources import AdapterSource, SourceError
from adapterhub.spec.composition import setup_names

REPLICA_HEADER = "X-Adapterhub-Replica"
REPLICA_ADAPTERS_HEADER = "X-Adapterhub-Replica-Adapters"
APP_NAME = "adapterhub"
METRICS_BOARD = f"{APP_NAME}-metrics"
METRICS_PUSH_S = 1.0  # each replica pushes its metrics text this often
METRICS_STALE_S = 10.0  # a replica silent this long (gone) leaves /metrics

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


@ray.remote(num_cpus=0)
class MetricsBoard:
    """The latest Prometheus text of each replica (pushed every ``METRICS_PUSH_S``), read by the gateway."""

    def __init__(self) -> None:
        self.texts: dict[str, tuple[float, str]] = {}

    def put(self, replica: str, text: str) -> None:
        self.texts[replica] = (time.time(), text)

    def get(self) -> dict[str, str]:
        """Texts of the replicas heard from within ``METRICS_STALE_S``."""
        now = time.time()
        return {r: text for r, (at, text) in self.texts.items() if now - at <= METRICS_STALE_S}


def metrics_board() -> Any:
    """The application's one ``MetricsBoard`` (created by whichever deployment asks first)."""
    return MetricsBoard.options(  # type: ignore[attr-defined]
        name=METRICS_BOARD, namespace=APP_NAME, get_if_exists=True, lifetime="detached"
    ).remote()


async def call_app(app: Any, method: str, path: str, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP request through the ASGI ``app`` in this process (no socket, the app's lifespan not run): its
    status, headers and whole body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    never: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    status, headers, chunks = 500, [], []

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop()
        return await never  # no disconnect: the caller waits for the whole answer

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers
        if message["type"] == "http.response.start":
            status = message["status"]
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, headers, b"".join(chunks)


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
    ) -> None:
        self.engine = ServingEngine.from_pretrained(
            model,
            adapters=dict(adapters),
            config=EngineConfig.from_dict(config),
            fusions=fusions,
            device=device,
        )
        await self.engine.start()
        self.replica = serve.get_replica_context().replica_id.unique_id

        async def load(model_id: str) -> tuple[str, ...]:
            """Load every adapter of the setup ``model_id`` into this replica's engine."""
            names = tuple(setup_names(parse_request_setup(model_id)))
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
        self.board = metrics_board()
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
        return {"result": {"adapters": self.engine.adapters(), "max_loaded": self.engine.config.max_loaded}}


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


def _not_here(what: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"{what} is not served by the Ray Serve deployment (it would have to reach every replica); "
         "run adapterhub serve-model without --ray for it."},
        501,
    )  # fmt: skip


@serve.deployment
@serve.ingress(gateway_app)
class Gateway:
    """The HTTP front: the request's adapter becomes the multiplexed model id of the call to the replicas."""

    def __init__(self, replicas: DeploymentHandle, num_replicas: int) -> None:
        self.replicas = replicas
        self.num_replicas = num_replicas
        self.started = time.time()
        self.base_id: str | None = None
        self.board = metrics_board()

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

    @gateway_app.post("/v1/adapters")
    async def add_adapter(self) -> JSONResponse:
        return _not_here("POST /v1/adapters")

    @gateway_app.delete("/v1/adapters/{name}")
    async def delete_adapter(self, name: str) -> JSONResponse:
        return _not_here("DELETE /v1/adapters")

    async def _openai(self, request: Request, model: str | None = None) -> Response:
        """Forward an OpenAI route to a replica: the body's ``model`` (an adapter) is the multiplexed id, the base
        model's id none. A body that is not JSON is forwarded as is, for the replica to answer 400."""
        raw = await request.body()
        if model is None and raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                if parsed.get("stream") is True:
                    return openai_error(
                        400,
                        '"stream": true is not served by the Ray Serve deployment (adapterhub serve-model --ray); '
                        "send the request without stream, or run adapterhub serve-model without --ray to stream.",
                        param="stream",
                        code="unsupported_value",
                    )
                model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
        if self.base_id is None:
            self.base_id = await self.replicas.model_id.remote()
        handle = self.replicas
        if model and model != self.base_id:
            handle = handle.options(multiplexed_model_id=model)
        answer = await handle.openai.remote(request.method, request.url.path, raw)
        keep = {"content-type", "retry-after"}
        headers = {k: v for k, v in answer["headers"] if k.lower() in keep}
        headers |= {REPLICA_HEADER: answer["replica"], REPLICA_ADAPTERS_HEADER: ",".join(answer["loaded"])}
        return Response(answer["body"], answer["status"], headers=headers)

    @gateway_app.post("/v1/completions", summary="OpenAI text completion on a replica (not streamed)")
    async def completions(self, request: Request) -> Response:
        return await self._openai(request)

    @gateway_app.post("/v1/chat/completions", summary="OpenAI chat completion on a replica (not streamed)")
    async def chat(self, request: Request) -> Response:
        return await self._openai(request)

    @gateway_app.get("/v1/models", summary="OpenAI model list: the base model and every adapter")
    async def models(self, request: Request) -> Response:
        return await self._openai(request, "")

    @gateway_app.get("/v1/models/{model:path}", summary="one model of the list")
    async def model(self, model: str, request: Request) -> Response:
        return await self._openai(request, "")

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
    max_ongoing_requests: int | None = None,
) -> Any:
    """The Ray Serve application (``Gateway`` bound to ``replicas`` ``EngineReplica`` replicas) for ``serve.run``.

    ``adapters``: name -> source (a string or ``AdapterSource``); ``fusions``: saved AdapterFusion directories
    (``--fusion``); ``replica_cpus`` / ``replica_gpus``: Ray
    resources reserved per replica; ``device``: the replicas' torch device; ``max_ongoing_requests``: requests one
    replica takes at once (default ``2 * max_batch_rows``, so that a replica can fill its passes; beyond it Ray
    routes elsewhere)."""
    if not isinstance(replicas, int) or replicas < 1:
        raise ConfigError(f"replicas must be a positive integer, got {replicas!r}.")
    ongoing = max_ongoing_requests or 2 * config.max_batch_rows
    resources = {"num_cpus": replica_cpus, "num_gpus": replica_gpus}
    engine = EngineReplica.options(
        num_replicas=replicas, max_ongoing_requests=ongoing, ray_actor_options=resources
    ).bind(model, dict(adapters), config.to_dict(), device, list(fusions))
    return Gateway.options(max_ongoing_requests=max(ongoing * replicas, 100)).bind(engine, replicas)


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
    token: str | None = None,
    preload: bool = False,
) -> int:
    """``adapterhub serve-model --ray ...``: build the application and serve it until Ctrl-C."""
    for flag, given in (("--token", token is not None), ("--preload", preload)):
        if given:
            raise ConfigError(
                f"{flag} is not available with --ray (adding/deleting adapters and preloading would have to reach "
                "every replica; adapters load on first use on the replica Ray routes them to). Drop it."
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
    )

    def ready(url: str) -> None:
        print(f"serving {model} with {len(adapters)} adapter(s) on {replicas} Ray Serve replica(s) at {url}")

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: run() shuts Serve and Ray down on its way out
        run(app, host=host, port=port, address=address, ready=ready)
    return 0

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

Not served here (each would have to reach every replica): ``POST/DELETE /v1/adapters``, ``/v1/completions`` and
``/metrics`` answer 501 saying so (Ray's own metrics cover the deployments). Errors keep the single-process
server's statuses (404 unknown adapter, 422 bad input, 429 queue full, 502 source failed, 503 shutting down):
the replica turns an ``AdapterHubError`` into ``{"error": {"status", "detail", "headers"}}``, so no exception
has to survive Ray's pickling.

Adapter sources are given to every replica and loaded there: directories must exist on every node that runs a
replica (hub identifiers and ``hf:`` sources work anywhere). Only ``--ray`` imports this module (and Ray).
"""

# No ``from __future__ import annotations``: Ray's ingress rebuilds the route functions, and FastAPI must see the
# body classes themselves (string annotations would turn the bodies into query parameters).
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from adapterhub.errors import AdapterHubError, ConfigError
from adapterhub.serving.app import EmbedBody, GenerateBody, PredictBody
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.serving.registry import UnknownAdapterError
from adapterhub.serving.scheduler import QueueFullError, ShuttingDownError
from adapterhub.serving.setups import parse_request_setup
from adapterhub.serving.sources import AdapterSource, SourceError
from adapterhub.spec.composition import setup_names

REPLICA_HEADER = "X-Adapterhub-Replica"
REPLICA_ADAPTERS_HEADER = "X-Adapterhub-Replica-Adapters"
APP_NAME = "adapterhub"

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

    @gateway_app.post("/v1/completions")
    async def completions(self) -> JSONResponse:
        return _not_here("POST /v1/completions")

    @gateway_app.get("/metrics")
    async def metrics(self) -> JSONResponse:
        return _not_here("GET /metrics")

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

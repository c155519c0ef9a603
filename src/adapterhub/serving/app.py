"""The HTTP API of ``adapterhub serve-model`` (FastAPI; OpenAPI at ``/docs``), over a ``ServingEngine``.

Endpoints: ``POST /v1/predict``, ``POST /v1/embed``, ``POST /v1/generate``, ``GET/POST /v1/adapters``,
``DELETE /v1/adapters/{name}`` (POST and DELETE need ``Authorization: Bearer TOKEN`` when the server has a token),
``GET /health``, ``GET /metrics`` (Prometheus text), and the OpenAI-compatible ``POST /v1/chat/completions``,
``POST /v1/completions``, ``GET /v1/models`` (``openai_routes``), and vLLM's ``POST /v1/load_lora_adapter`` /
``POST /v1/unload_lora_adapter`` (``lora_routes``; token-protected). Generation runs in the server's continuous-batching
``GenerationEngine`` (decoders only).

Errors of the project's routes: 404 unknown adapter (with close matches), 422 malformed body / bad input / input
too long, 429 queue full (``Retry-After``), 502 an adapter's source failed to load, 503 shutting down; always
``{"detail": message}``. The OpenAI routes answer in OpenAI's error shape, 400 for every invalid request
(``openai_errors``). The engine starts with the app and its shutdown (lifespan end) answers every queued request
first.
"""

from __future__ import annotations

import gc
import hmac
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapterhub.errors import AdapterHubError
from adapterhub.serving.engine import ServingEngine
from adapterhub.serving.gen_service import ContextLengthError
from adapterhub.serving.lora_routes import lora_router
from adapterhub.serving.openai_errors import error_response, is_openai, validation_error
from adapterhub.serving.openai_routes import openai_router
from adapterhub.serving.registry import UnknownAdapterError
from adapterhub.serving.scheduler import QueueFullError, ShuttingDownError
from adapterhub.serving.sources import SourceError

TextInput = str | list[str] | dict[str, Any]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictBody(_Body):
    adapter: str | None = Field(None, description="adapter name (or give setup)")
    setup: str | None = Field(None, description='composition, e.g. "Stack(lang, task)" or "Fuse(a, b, c)"')
    inputs: list[TextInput] = Field(
        ...,
        min_length=1,
        description='texts, [text, pair] lists, or {"context", "choices"} (multiple choice)',
    )
    truncate: bool = Field(False, description="cut rows longer than the model takes instead of answering 422")
    logits: bool = Field(False, description="add the raw logits to each prediction")


class EmbedBody(_Body):
    adapter: str | None = None
    setup: str | None = None
    inputs: list[str | list[str]] = Field(..., min_length=1)
    pooling: str = Field("mean", description="mean, first or last")
    truncate: bool = False


class GenerateBody(_Body):
    adapter: str | None = Field(None, description="adapter name (None: the base model)")
    inputs: list[str] = Field(..., min_length=1, description="prompts")
    max_new_tokens: int = Field(32, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, description="0: greedy")
    top_k: int = Field(0, ge=0, description="0: off")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, lt=2**63)
    stop: list[str] | None = None
    repetition_penalty: float = Field(1.0, gt=0.0, description="transformers' definition (1: off)")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI's definition (0: off)")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI's definition (0: off)")
    truncate: bool = False


class AdapterBody(_Body):
    name: str
    source: str = Field(..., description="directory, hub identifier (task/subtask@owner) or hf:owner/repo")
    load: bool = Field(False, description="load now (a failing source answers 502 and is not added)")


def freeze_startup_objects() -> int:
    """Collect the garbage, then move every object alive into the permanent generation (``gc.freeze()``), which
    the cyclic collector never scans: the ~450k objects alive after start-up (the model's and the imported
    libraries') would otherwise be walked by every full collection, holding the GIL against the generation
    engine's step thread. They are still freed by reference counting; a cycle among them made garbage later is
    only reclaimed after ``gc.unfreeze()``. Returns ``gc.get_freeze_count()``."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def create_app(
    engine: ServingEngine,
    *,
    token: str | None = None,
    preload: bool = False,
    title: str = "adapterhub serve-model",
) -> FastAPI:
    """The FastAPI app over ``engine``; ``token``: required bearer token of POST/DELETE /v1/adapters;
    ``preload``: load every known adapter at start (else on first use). With ``engine.config.gc_freeze`` the
    start-up ends with ``freeze_startup_objects()`` and the shutdown unfreezes."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            if preload:
                for name in list(engine.registry.sources):
                    await engine.load(name)
            if engine.config.gc_freeze:
                freeze_startup_objects()
            yield
        finally:
            await engine.shutdown()
            if engine.config.gc_freeze:
                gc.unfreeze()  # what start-up froze goes back to the collector (e.g. an app served in tests)

    app = FastAPI(title=title, lifespan=lifespan, description=__doc__)
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        if is_openai(request):
            return validation_error(error)
        return await request_validation_exception_handler(request, error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Any:
        if is_openai(request):
            headers = dict(error.headers) if error.headers else None
            return error_response(request, error.status_code, str(error.detail), headers=headers)
        return await http_exception_handler(request, error)

    @app.exception_handler(UnknownAdapterError)
    async def unknown(request: Request, error: UnknownAdapterError) -> JSONResponse:
        return error_response(request, 404, str(error), code="model_not_found", param="model")

    @app.exception_handler(SourceError)
    async def source_failed(request: Request, error: SourceError) -> JSONResponse:
        return error_response(request, 502, str(error))

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, error: QueueFullError) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)}
        return error_response(request, 429, str(error), headers=headers, code="rate_limit_exceeded")

    @app.exception_handler(ShuttingDownError)
    async def shutting_down(request: Request, error: ShuttingDownError) -> JSONResponse:
        return error_response(request, 503, str(error))

    @app.exception_handler(ContextLengthError)
    async def too_long(request: Request, error: ContextLengthError) -> JSONResponse:
        chat = request.url.path.rstrip("/") == "/v1/chat/completions"
        param = "messages" if chat else "prompt"
        return error_response(request, 422, str(error), code="context_length_exceeded", param=param)

    @app.exception_handler(AdapterHubError)
    async def bad_request(request: Request, error: AdapterHubError) -> JSONResponse:
        return error_response(request, 422, str(error))

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        if endpoint != "/metrics":
            engine.metrics.request(endpoint, response.status_code, time.perf_counter() - started)
        return response

    def require_token(authorization: str | None = Header(None)) -> None:
        if token is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "This server needs its token: send Authorization: Bearer TOKEN.")

    @app.post("/v1/predict", summary="predictions of an adapter's (or setup's) head, one per input")
    async def predict(body: PredictBody) -> dict[str, Any]:
        return await engine.predict(
            body.inputs, adapter=body.adapter, setup=body.setup, truncate=body.truncate, logits=body.logits
        )

    @app.post("/v1/embed", summary="pooled last hidden states, one vector per input")
    async def embed(body: EmbedBody) -> dict[str, Any]:
        return await engine.embed(
            body.inputs, adapter=body.adapter, setup=body.setup, pooling=body.pooling, truncate=body.truncate
        )

    @app.post("/v1/generate", summary="continue prompts with an adapter's causal-LM head")
    async def generate(body: GenerateBody) -> dict[str, Any]:
        return await engine.generate(
            body.inputs,
            adapter=body.adapter,
            max_new_tokens=body.max_new_tokens,
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stop,
            repetition_penalty=body.repetition_penalty,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            truncate=body.truncate,
        )

    app.include_router(openai_router(engine))
    app.include_router(lora_router(engine, require_token))

    @app.get("/v1/adapters", summary="known adapters; loaded ones with method, head, labels and memory")
    async def list_adapters() -> dict[str, Any]:
        return {
            "adapters": engine.adapters(),
            "fusions": engine.fusions.describe(),
            "compositions": engine.compositions.describe(),
            "max_loaded": engine.config.max_loaded,
        }

    @app.post("/v1/adapters", summary="add an adapter by source", dependencies=[Depends(require_token)])
    async def add_adapter(body: AdapterBody) -> dict[str, Any]:
        return await engine.add_adapter(body.name, body.source, load=body.load)

    @app.delete(
        "/v1/adapters/{name}", summary="forget and evict an adapter", dependencies=[Depends(require_token)]
    )
    async def delete_adapter(name: str) -> dict[str, Any]:
        await engine.remove_adapter(name)
        return {"deleted": name}

    @app.get("/health", summary="liveness and load")
    async def health() -> dict[str, Any]:
        scheduler = engine.scheduler
        config: Any = engine.model.config
        return {
            "status": "ok",
            "model": str(getattr(config, "name_or_path", "") or config.model_type),
            "adapters_known": len(engine.registry.sources),
            "adapters_loaded": len(engine.registry.loaded),
            "queue_rows": 0 if scheduler is None else scheduler.queued_rows,
            "generation": None if engine.generation is None else engine.generation.engine.stats(),
        }

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    return app

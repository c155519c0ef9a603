"""The HTTP API of ``adapterhub serve-model`` (FastAPI; OpenAPI at ``/docs``), over a ``ServingEngine``.

Endpoints: ``POST /v1/predict``, ``POST /v1/embed``, ``POST /v1/generate``, ``POST /v1/completions``
(OpenAI-compatible, ``model`` = adapter name, ``stream`` as server-sent events), ``GET/POST /v1/adapters``,
``DELETE /v1/adapters/{name}`` (POST and DELETE need ``Authorization: Bearer TOKEN`` when the server has a token),
``GET /health``, ``GET /metrics`` (Prometheus text).

Errors: 404 unknown adapter (with close matches), 422 malformed body / bad input / input too long, 429 queue full
(``Retry-After``), 502 an adapter's source failed to load, 503 shutting down; always ``{"detail": message}``.
The engine starts with the app and its shutdown (lifespan end) answers every queued request first.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from adapterhub.errors import AdapterHubError
from adapterhub.serving.engine import ServingEngine
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
    adapter: str
    inputs: list[str] = Field(..., min_length=1, description="prompts")
    max_new_tokens: int = Field(32, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    truncate: bool = False


class CompletionBody(BaseModel):
    model: str = Field(..., description="the adapter's name")
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1, le=4096)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1, description="only 1 is served")
    stream: bool = Field(False, description="server-sent events, one chunk per new token, then [DONE]")


class AdapterBody(_Body):
    name: str
    source: str = Field(..., description="directory, hub identifier (task/subtask@owner) or hf:owner/repo")
    load: bool = Field(False, description="load now (a failing source answers 502 and is not added)")


async def _stream_completion(engine: ServingEngine, body: CompletionBody, prompts: list[str]) -> Any:
    """OpenAI's streamed completion: ``data: {chunk}`` per new token of each prompt (``choices[0].index`` = the
    prompt), a last chunk per prompt with its ``finish_reason``, then ``data: [DONE]``. Errors raise before the
    first byte (the first step is computed here)."""
    stream = engine.generate_stream(
        prompts, adapter=body.model, max_new_tokens=body.max_tokens, temperature=body.temperature,
        top_p=body.top_p, seed=body.seed,
    )  # fmt: skip
    first = await anext(stream, None)
    ident, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())

    def chunk(index: int, text: str, finish: str | None) -> str:
        choice = {"text": text, "index": index, "logprobs": None, "finish_reason": finish}
        payload = {"id": ident, "object": "text_completion", "created": created, "model": body.model,
                   "choices": [choice]}  # fmt: skip
        return f"data: {json.dumps(payload)}\n\n"

    async def events() -> AsyncIterator[str]:
        ids: list[list[int]] = [[] for _ in prompts]
        texts = ["" for _ in prompts]
        step = first
        try:
            while step is not None:
                for row, token in enumerate(step):
                    if token is None:
                        continue
                    ids[row].append(token)
                    text = engine.tokenizer.decode(ids[row], skip_special_tokens=True)
                    delta, texts[row] = text[len(texts[row]) :] if text.startswith(texts[row]) else text, text
                    yield chunk(row, delta, None)
                step = await anext(stream, None)
        finally:  # the client went away: stop generating, release the adapter
            await stream.aclose()
        for row, row_ids in enumerate(ids):
            stopped = engine.eos_id is not None and bool(row_ids) and row_ids[-1] == engine.eos_id
            yield chunk(row, "", "stop" if stopped else "length")
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


def create_app(
    engine: ServingEngine,
    *,
    token: str | None = None,
    preload: bool = False,
    title: str = "adapterhub serve-model",
) -> FastAPI:
    """The FastAPI app over ``engine``; ``token``: required bearer token of POST/DELETE /v1/adapters;
    ``preload``: load every known adapter at start (else on first use)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            if preload:
                for name in list(engine.registry.sources):
                    await engine.load(name)
            yield
        finally:
            await engine.shutdown()

    app = FastAPI(title=title, lifespan=lifespan, description=__doc__)
    app.state.engine = engine

    @app.exception_handler(UnknownAdapterError)
    async def unknown(request: Request, error: UnknownAdapterError) -> JSONResponse:
        return _error(404, str(error))

    @app.exception_handler(SourceError)
    async def source_failed(request: Request, error: SourceError) -> JSONResponse:
        return _error(502, str(error))

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, error: QueueFullError) -> JSONResponse:
        return _error(429, str(error), {"Retry-After": str(error.retry_after)})

    @app.exception_handler(ShuttingDownError)
    async def shutting_down(request: Request, error: ShuttingDownError) -> JSONResponse:
        return _error(503, str(error))

    @app.exception_handler(AdapterHubError)
    async def bad_request(request: Request, error: AdapterHubError) -> JSONResponse:
        return _error(422, str(error))

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
            top_p=body.top_p,
            seed=body.seed,
            truncate=body.truncate,
        )

    @app.post("/v1/completions", summary="OpenAI-compatible text completion (model = adapter name)")
    async def completions(body: CompletionBody) -> Any:
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise HTTPException(422, "prompt is empty.")
        if body.stream:
            return await _stream_completion(engine, body, prompts)
        result = await engine.generate(
            prompts,
            adapter=body.model,
            max_new_tokens=body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
        )
        prompt_tokens = sum(len(engine.tokenizer(p)["input_ids"]) for p in prompts)
        choices, completion_tokens = [], 0
        for i, (text, ids) in enumerate(zip(result["texts"], result["token_ids"], strict=True)):
            completion_tokens += len(ids)
            stopped = engine.eos_id is not None and bool(ids) and ids[-1] == engine.eos_id
            choices.append(
                {"text": text, "index": i, "logprobs": None, "finish_reason": "stop" if stopped else "length"}
            )
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @app.get("/v1/adapters", summary="known adapters; loaded ones with method, head, labels and memory")
    async def list_adapters() -> dict[str, Any]:
        return {
            "adapters": engine.adapters(),
            "fusions": engine.fusions.describe(),
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
        }

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    return app

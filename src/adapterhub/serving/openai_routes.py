"""The OpenAI-compatible routes of ``serve-model``: ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models`` (and ``/v1/models/{id}``), over the server's generation engine.

``model`` picks the adapter: the base model's id (``engine.model_id``) is the base alone, an adapter's name that
adapter, a composition's name (``compositions``) its setup. Chat prompts are the messages under the tokenizer's chat template (the adapter's own tokenizer when its
directory holds one, else the base's) with the generation prompt added. Sampling: ``temperature`` (0: greedy;
``top_p``/``top_k`` are then ignored), ``top_p``, ``top_k`` (an extension), ``seed`` (choice ``j`` draws with seed
``seed + j``), ``presence_penalty`` / ``frequency_penalty`` (OpenAI's, over the completion's tokens, greedy
included), ``repetition_penalty`` (an extension, as vLLM's: transformers' definition over prompt and completion),
``stop``, ``n``, ``logprobs`` (the chosen tokens' log-probabilities) with up to ``MAX_TOP_LOGPROBS`` most likely
alternatives per token (chat: ``top_logprobs``; completions: ``logprobs: N``), from the distribution the token
was chosen from (``sampling``). ``stream: true`` answers server-sent events (``chat.completion.chunk`` / ``text_completion`` chunks, a
chunk with each choice's ``finish_reason``, an optional usage chunk, then ``data: [DONE]``); a client that goes
away cancels its sequences, which leave the batch at the next step. Errors: see ``openai_errors``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from adapterhub.errors import ConfigError, did_you_mean
from adapterhub.serving.engine import ServingEngine
from adapterhub.serving.gen_service import GenerationRun
from adapterhub.serving.registry import UnknownAdapterError
from adapterhub.serving.sampling import MAX_TOP_LOGPROBS, TopLogprobs

_MAX_SEED = 2**63 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(..., description="the base model's id (no adapter) or an adapter's name")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0: greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="extension: keep the k most likely tokens (0: off)")
    seed: int | None = Field(None, ge=0, le=_MAX_SEED)
    presence_penalty: float = Field(
        0.0, ge=-2.0, le=2.0, description="OpenAI's: minus p once a token appeared"
    )
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="OpenAI's: minus f per appearance")
    repetition_penalty: float = Field(
        1.0, gt=0.0, description="extension (as vLLM): transformers' repetition penalty (1: off)"
    )
    n: int = Field(1, ge=1, le=64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionBody(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1, description="None: as many as the context leaves")
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="the chosen tokens' logprobs and the N most likely alternatives of each (0: none)",
    )
    echo: Literal[False] = False


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None


class ChatBody(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="None: as many as the context leaves")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
        description="the N most likely alternatives per token (needs logprobs)",
    )


def resolve_model(engine: ServingEngine, name: str) -> str | None:
    """The adapter ``model`` names (None: the base model); an unknown one raises naming the available ones."""
    if name == engine.model_id:
        return None
    if name in engine.registry.sources or name in engine.compositions.setups:
        return name
    adapters = sorted([*engine.registry.sources, *engine.compositions.setups])
    available = ", ".join(repr(m) for m in [engine.model_id, *adapters])
    raise UnknownAdapterError(
        f"The model {name!r} does not exist on this server{did_you_mean(name, [engine.model_id, *adapters])}. "
        f"Available models: {available} (the base model's id means no adapter)."
    )


def _sampling(body: _Sampling, logprobs: bool, top_logprobs: int) -> dict[str, Any]:
    greedy = body.temperature == 0
    return {
        "temperature": body.temperature,
        "top_p": 1.0 if greedy else body.top_p,
        "top_k": 0 if greedy else body.top_k,
        "seed": body.seed,
        "stop": body.stop,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "repetition_penalty": body.repetition_penalty,
        "logprobs": logprobs,
        "top_logprobs": top_logprobs,
    }


def chat_prompt(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    """The token ids of ``messages`` under the tokenizer's chat template, generation prompt added."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "This model's tokenizer has no chat template, so chat messages cannot be turned into a prompt; use "
            "/v1/completions with a prompt, or serve a tokenizer with a chat template."
        )
    turns = [
        {
            "role": m.role,
            "content": m.content if isinstance(m.content, str) else "".join(p.text for p in m.content),
        }
        for m in messages
    ]
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as error:  # the template's own checks (e.g. roles that must alternate)
        raise ConfigError(f"The chat template refused the messages: {error}") from error
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _token_text(tokenizer: Any, token: int) -> str:
    return str(tokenizer.decode([token], skip_special_tokens=False))


def _chat_logprobs(
    tokenizer: Any, ids: Sequence[int], logprobs: Sequence[float], tops: Sequence[TopLogprobs] | None
) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: ``content[i]`` = ``{token, logprob, bytes, top_logprobs: [{token, logprob,
    bytes}, ...]}`` (the alternatives most likely first; ``[]`` without ``top_logprobs``)."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        text = _token_text(tokenizer, token)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = []
    for i, (token, logprob) in enumerate(zip(ids, logprobs, strict=True)):
        top = [] if tops is None else [entry(t, v) for t, v in tops[i]]
        content.append({**entry(token, logprob), "top_logprobs": top})
    return {"content": content}


def _completion_logprobs(
    tokenizer: Any, ids: Sequence[int], logprobs: Sequence[float], tops: Sequence[TopLogprobs] | None
) -> dict[str, Any]:
    """OpenAI's completions ``logprobs``: ``tokens``, ``token_logprobs``, ``text_offset`` and ``top_logprobs``
    (None for ``logprobs: 0``; else per token a ``{text: logprob}`` dict of the N alternatives plus the chosen
    token, so up to N + 1 entries as OpenAI documents; ids that decode to the same text keep the likelier)."""
    tokens = [_token_text(tokenizer, t) for t in ids]
    offsets, at = [], 0
    for text in tokens:
        offsets.append(at)
        at += len(text)
    top_dicts = None
    if tops is not None:
        top_dicts = []
        for text, logprob, top in zip(tokens, logprobs, tops, strict=True):
            alternatives: dict[str, float] = {}
            for t, v in top:
                alternatives.setdefault(_token_text(tokenizer, t), v)
            alternatives.setdefault(text, logprob)
            top_dicts.append(alternatives)
    return {
        "tokens": tokens,
        "token_logprobs": list(logprobs),
        "top_logprobs": top_dicts,
        "text_offset": offsets,
    }


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _stream(
    run: GenerationRun,
    tokenizer: Any,
    chunk: Callable[[int, str, str | None, float | None, int | None, TopLogprobs | None], dict[str, Any]],
    first: list[dict[str, Any]],
    usage: Callable[[int], dict[str, Any]] | None,
) -> StreamingResponse:
    """SSE over ``run``: ``first`` chunks, a chunk per new token (``chunk(index, text delta, None, logprob,
    token, top logprobs)``), a chunk per choice as it ends (its finish reason), the usage chunk (if asked), ``[DONE]``."""

    async def events() -> AsyncIterator[str]:
        ids: list[list[int]] = [[] for _ in run.handles]
        texts = ["" for _ in run.handles]
        stream = run.events()
        try:
            for payload in first:
                yield _sse(payload)
            async for index, token in stream:
                handle = run.handles[index]
                if token is None:
                    yield _sse(chunk(index, "", handle.finish_reason or "stop", None, None, None))
                    continue
                ids[index].append(token)
                text = tokenizer.decode(ids[index], skip_special_tokens=True)
                delta = text[len(texts[index]) :] if text.startswith(texts[index]) else text
                texts[index] = text
                at = len(ids[index]) - 1
                logprob = handle.logprobs[at] if handle.wants_logprobs else None
                top = handle.top_logprobs[at] if handle.wants_top_logprobs else None
                yield _sse(chunk(index, delta, None, logprob, token, top))
            if usage is not None:
                yield _sse(usage(sum(len(i) for i in ids)))
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): cancel what still runs
            run.cancel()
            await stream.aclose()

    return StreamingResponse(events(), media_type="text/event-stream")


def openai_router(engine: ServingEngine) -> APIRouter:
    """The OpenAI-compatible routes over ``engine``."""
    router = APIRouter()
    created = int(time.time())

    def model_card(name: str | None) -> dict[str, Any]:
        """The base model (None) or an adapter; an adapter's ``root`` is its source (as vLLM's LoRA cards) and
        ``hash`` its weights hash (None until first loaded)."""
        card = {"object": "model", "created": created, "owned_by": "adapterhub"}
        if name is None:
            return {"id": engine.model_id, **card, "root": engine.model_id, "parent": None}
        if name in engine.compositions.setups:
            setup = engine.compositions.texts[name]
            return {"id": name, **card, "root": setup, "parent": engine.model_id, "composition": setup}
        source = engine.registry.sources.get(name)
        root = None if source is None else str(source)
        extra = {"root": root, "parent": engine.model_id, "hash": engine.registry.hashes.get(name)}
        return {"id": name, **card, **extra}

    @router.get("/v1/models", summary="OpenAI model list: the base model and every adapter")
    async def models() -> dict[str, Any]:
        names = [*sorted(engine.registry.sources), *engine.compositions.names()]
        cards = [model_card(None), *(model_card(a) for a in names)]
        return {"object": "list", "data": cards}

    @router.get("/v1/models/{model:path}", summary="one model of the list")
    async def model(model: str) -> dict[str, Any]:
        return model_card(resolve_model(engine, model))

    @router.post("/v1/completions", summary="OpenAI text completion (model: base id or adapter name)")
    async def completions(body: CompletionBody) -> Any:
        adapter = resolve_model(engine, body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        tokenizer = engine.tokenizer_for(adapter)
        prompt_ids = engine.encode_prompts(prompts, max_new_tokens=body.max_tokens, tokenizer=tokenizer)
        with_logprobs = body.logprobs is not None
        top_n = body.logprobs or 0
        run = await engine.open_generation(
            prompt_ids, adapter=adapter, max_new_tokens=body.max_tokens, n=body.n, tokenizer=tokenizer,
            **_sampling(body, with_logprobs, top_n),
        )  # fmt: skip
        ident = f"cmpl-{uuid.uuid4().hex[:24]}"
        head = {"id": ident, "object": "text_completion", "created": int(time.time()), "model": body.model}
        prompt_tokens = sum(len(p) for p in prompt_ids)
        if body.stream:

            def chunk(
                i: int,
                text: str,
                finish: str | None,
                lp: float | None,
                token: int | None,
                top: TopLogprobs | None,
            ) -> dict[str, Any]:
                logprobs = None
                if lp is not None and token is not None:
                    logprobs = _completion_logprobs(tokenizer, [token], [lp], None if top is None else [top])
                choice = {"text": text, "index": i, "logprobs": logprobs, "finish_reason": finish}
                return {**head, "choices": [choice]}

            usage = None
            if body.stream_options is not None and body.stream_options.include_usage:
                usage = lambda done: {**head, "choices": [], "usage": _usage(prompt_tokens, done)}  # noqa: E731
            return _stream(run, tokenizer, chunk, [], usage)
        done = await run.completions()
        choices = []
        for i, c in enumerate(done):
            logprobs = (
                _completion_logprobs(tokenizer, c.ids, c.logprobs or [], c.top_logprobs if top_n else None)
                if with_logprobs
                else None
            )
            text = tokenizer.decode(c.ids, skip_special_tokens=True)
            choices.append({"text": text, "index": i, "logprobs": logprobs, "finish_reason": c.finish_reason})
        return {**head, "choices": choices, "usage": _usage(prompt_tokens, sum(len(c.ids) for c in done))}

    @router.post("/v1/chat/completions", summary="OpenAI chat completion (model: base id or adapter name)")
    async def chat(body: ChatBody) -> Any:
        adapter = resolve_model(engine, body.model)
        tokenizer = engine.tokenizer_for(adapter)
        prompt = chat_prompt(tokenizer, body.messages)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        top_n = body.top_logprobs or 0
        if top_n and not body.logprobs:
            raise ConfigError(f'top_logprobs={top_n} needs "logprobs": true; set it as well.')
        run = await engine.open_generation(
            [prompt], adapter=adapter, max_new_tokens=max_tokens, n=body.n, tokenizer=tokenizer,
            **_sampling(body, body.logprobs, top_n),
        )  # fmt: skip
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created_at = int(time.time())
        if body.stream:
            head = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created_at,
                "model": body.model,
            }

            def chunk(
                i: int,
                text: str,
                finish: str | None,
                lp: float | None,
                token: int | None,
                top: TopLogprobs | None,
            ) -> dict[str, Any]:
                logprobs = None
                if lp is not None and token is not None:
                    logprobs = _chat_logprobs(tokenizer, [token], [lp], None if top is None else [top])
                delta = {"content": text} if finish is None else {}
                return {
                    **head,
                    "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                }

            first = [
                {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                      "logprobs": None, "finish_reason": None}]}
                for i in range(len(run.handles))
            ]  # fmt: skip
            usage = None
            if body.stream_options is not None and body.stream_options.include_usage:
                usage = lambda done: {**head, "choices": [], "usage": _usage(len(prompt), done)}  # noqa: E731
            return _stream(run, tokenizer, chunk, first, usage)
        done = await run.completions()
        choices = []
        for i, c in enumerate(done):
            text = tokenizer.decode(c.ids, skip_special_tokens=True)
            logprobs = (
                _chat_logprobs(tokenizer, c.ids, c.logprobs or [], c.top_logprobs) if body.logprobs else None
            )
            message = {"role": "assistant", "content": text}
            choices.append(
                {"index": i, "message": message, "logprobs": logprobs, "finish_reason": c.finish_reason}
            )
        return {
            "id": ident,
            "object": "chat.completion",
            "created": created_at,
            "model": body.model,
            "choices": choices,
            "usage": _usage(len(prompt), sum(len(c.ids) for c in done)),
        }

    return router

"""Helpers of the serving tests: run ``create_app`` over a ``ServingEngine`` in this event loop (lifespan
included, token ``TOKEN``) with an httpx client, and a greedy ``/v1/completions`` call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from adapterhub.serving.app import create_app
from adapterhub.serving.engine import EngineConfig, ServingEngine

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def serve(directory: Any, adapters: dict[str, Any], body: Callable[[httpx.AsyncClient, ServingEngine], Awaitable[Any]],
          **config: Any) -> Any:  # fmt: skip
    engine = ServingEngine.from_pretrained(
        str(directory),
        adapters={k: str(v) for k, v in adapters.items()},
        config=EngineConfig(max_wait_ms=1, **config),
    )
    app = create_app(engine, token=TOKEN)

    async def main() -> Any:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                return await body(client, engine)

    return asyncio.run(main())


async def complete(
    client: httpx.AsyncClient, model: str, prompt: str = "the movie was", tokens: int = 8
) -> Any:
    answer = await client.post(
        "/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0}
    )
    return answer

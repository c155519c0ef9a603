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


# Ray Serve's router sends a request for an adapter no replica reports yet to the replica holding the fewest adapters,
# after waiting this long for a report (Ray's default 1 s). On two busy cores a replica's report of its first adapter
# can take longer, and the second adapter then lands on the same replica by a coin toss: the routing tests wait longer.
RAY_MATCHING_TIMEOUT_S = "5"


def ray_test_init_options() -> dict[str, Any]:
    """``ray.init`` options of the Ray tests: the library's (its source first on the workers' path) plus a longer
    multiplexed-model matching timeout for every Serve process, so routing assertions do not depend on load."""
    from adapterhub.serving import ray_serve

    options = ray_serve.ray_init_options()
    options["runtime_env"]["env_vars"]["RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S"] = (
        RAY_MATCHING_TIMEOUT_S
    )
    return options

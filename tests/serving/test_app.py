"""The HTTP API: endpoints, error statuses (404, 422, 429, 502, 401, 503) and graceful shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from adapterhub.serving.app import create_app
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.serving.sources import supports_hf


@asynccontextmanager
async def served(
    model_dir: Path, adapters: dict[str, Any], token: str | None = None, **config: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, ServingEngine]]:
    """The app in this event loop (lifespan included) and an HTTP client for it."""
    engine = ServingEngine.from_pretrained(
        str(model_dir), adapters={k: str(v) for k, v in adapters.items()}, config=EngineConfig(**config)
    )
    app = create_app(engine, token=token)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            yield client, engine


def run(
    model_dir: Path,
    adapters: dict[str, Any],
    body: Callable[[httpx.AsyncClient, ServingEngine], Awaitable[Any]],
    **options: Any,
) -> Any:
    async def main() -> Any:
        async with served(model_dir, adapters, **options) as (client, engine):
            return await body(client, engine)

    return asyncio.run(main())


def test_predict_and_unknown_adapter_names_close_matches(tiny_bert_dir, adapter_dirs):
    async def body(client, engine):
        ok = await client.post("/v1/predict", json={"adapter": "cls3", "inputs": ["a good film"]})
        assert ok.status_code == 200, ok.text
        assert ok.json()["adapter"] == "cls3" and len(ok.json()["predictions"]) == 1
        missing = await client.post("/v1/predict", json={"adapter": "cls4", "inputs": ["a good film"]})
        assert missing.status_code == 404
        assert "'cls3'" in missing.json()["detail"] and "'cls4'" in missing.json()["detail"]
        in_setup = await client.post("/v1/predict", json={"setup": "Stack(lang, tsk)", "inputs": ["x"]})
        assert in_setup.status_code == 404 and "'task'" in in_setup.json()["detail"]

    run(tiny_bert_dir, adapter_dirs, body)


def test_malformed_bodies_are_422(tiny_bert_dir, adapter_dirs):
    async def body(client, engine):
        bad = [
            {"adapter": "cls3"},  # no inputs
            {"adapter": "cls3", "inputs": "a good film"},  # not a list
            {"adapter": "cls3", "inputs": []},
            {"adapter": "cls3", "inputs": ["x"], "unknown": 1},
            {"adapter": "cls3", "setup": "cls2", "inputs": ["x"]},  # both
            {"inputs": ["x"]},  # neither
            {"setup": "Stack(lang,", "inputs": ["x"]},
            {"adapter": "cls3", "inputs": [["only one"]]},
            {"adapter": "lang", "inputs": ["x"]},  # no head: use /v1/embed
            {"adapter": "mc", "inputs": ["not a choice object"]},
        ]
        for payload in bad:
            response = await client.post("/v1/predict", json=payload)
            assert response.status_code == 422, (payload, response.text)
        raw = await client.post(
            "/v1/predict", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert raw.status_code == 422

    run(tiny_bert_dir, adapter_dirs, body)


def test_too_long_is_422_unless_truncated(tiny_bert_dir, adapter_dirs):
    long_text = " ".join(["good"] * 40)  # 42 tokens, the tiny model takes 24

    async def body(client, engine):
        refused = await client.post("/v1/predict", json={"adapter": "cls3", "inputs": [long_text]})
        assert refused.status_code == 422 and "truncate" in refused.json()["detail"]
        cut = await client.post(
            "/v1/predict", json={"adapter": "cls3", "inputs": [long_text], "truncate": True}
        )
        assert cut.status_code == 200
        tags = await client.post(
            "/v1/predict", json={"adapter": "tag", "inputs": [long_text], "truncate": True}
        )
        assert len(tags.json()["predictions"][0]["tokens"]) == engine.max_length - 2

    run(tiny_bert_dir, adapter_dirs, body)


def test_queue_full_is_429_with_retry_after(tiny_bert_dir, adapter_dirs):
    async def body(client, engine):
        await engine.load("cls3")
        first = asyncio.create_task(
            client.post("/v1/predict", json={"adapter": "cls3", "inputs": ["a", "b"]})
        )
        while engine.scheduler.queued_rows < 2:
            await asyncio.sleep(0.01)
        refused = await client.post("/v1/predict", json={"adapter": "cls3", "inputs": ["c"]})
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await first).status_code == 200  # the queued request is unaffected

    run(tiny_bert_dir, adapter_dirs, body, max_queue_rows=2, max_wait_ms=400)


def test_failing_source_is_502_for_that_request_only(tiny_bert_dir, adapter_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a Hugging Face loader, where installed, fails at once
    not_an_adapter = tmp_path / "empty"
    not_an_adapter.mkdir()
    adapters = {
        **adapter_dirs,
        "broken": not_an_adapter,
        "gone": tmp_path / "missing",
        "hub": "hf:owner/repo",
    }

    async def body(client, engine):
        await engine.load("cls3")
        responses = await asyncio.gather(
            client.post("/v1/predict", json={"adapter": "broken", "inputs": ["a"]}),
            client.post("/v1/predict", json={"adapter": "cls3", "inputs": ["a good film"]}),
            client.post("/v1/predict", json={"adapter": "gone", "inputs": ["a"]}),
            client.post("/v1/predict", json={"adapter": "cls2", "inputs": ["a bad film"]}),
        )
        assert [r.status_code for r in responses] == [502, 200, 502, 200]
        assert "broken" in responses[0].json()["detail"]
        assert "missing" in responses[2].json()["detail"]
        hf = await client.post("/v1/predict", json={"adapter": "hub", "inputs": ["a"]})
        assert hf.status_code == 502 and "hf:owner/repo" in hf.json()["detail"]
        if not supports_hf(engine.model):
            assert "Hugging Face loader" in hf.json()["detail"]
        assert engine.metrics.adapter_events["load_error"] == 3
        healthy = await client.get("/health")
        assert healthy.status_code == 200 and healthy.json()["status"] == "ok"

    run(tiny_bert_dir, adapters, body, max_wait_ms=50)


def test_an_adapter_with_a_built_in_head_is_refused_with_what_to_do(tiny_bert_dir, adapter_dirs, tmp_path):
    import transformers

    import adapterhub

    model = adapterhub.init(transformers.BertForSequenceClassification.from_pretrained(str(tiny_bert_dir)))
    model.add_adapter("static", config="pfeiffer")
    saved = model.save_adapter(tmp_path / "static", "static")

    async def body(client, engine):
        response = await client.post("/v1/predict", json={"adapter": "static", "inputs": ["a"]})
        assert response.status_code == 502
        assert "BertForSequenceClassification" in response.json()["detail"]
        assert "flexible head" in response.json()["detail"]
        assert not engine.model.has_adapter("static")

    run(tiny_bert_dir, {"static": saved}, body)


def test_adapters_endpoints_need_the_token(tiny_bert_dir, adapter_dirs):
    async def body(client, engine):
        listing = (await client.get("/v1/adapters")).json()["adapters"]
        assert {a["name"] for a in listing} == {"cls3"} and not listing[0]["loaded"]
        new = {"name": "reg2", "source": str(adapter_dirs["reg"])}
        assert (await client.post("/v1/adapters", json=new)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post("/v1/adapters", json=new, headers=wrong)).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        added = await client.post("/v1/adapters", json={**new, "load": True}, headers=auth)
        assert added.status_code == 200 and added.json()["head"] == "regression"
        value = await client.post("/v1/predict", json={"adapter": "reg2", "inputs": ["good"]})
        assert "value" in value.json()["predictions"][0]
        entry = next(a for a in (await client.get("/v1/adapters")).json()["adapters"] if a["name"] == "reg2")
        assert entry["method"] == "bottleneck" and entry["memory_bytes"] > 0 and entry["loaded"]
        bad = await client.post(
            "/v1/adapters", json={"name": "x", "source": "/nope", "load": True}, headers=auth
        )
        assert bad.status_code == 502
        assert "x" not in {a["name"] for a in (await client.get("/v1/adapters")).json()["adapters"]}
        assert (await client.delete("/v1/adapters/reg2")).status_code == 401
        assert (await client.delete("/v1/adapters/reg2", headers=auth)).status_code == 200
        assert not engine.model.has_adapter("reg2")
        gone = await client.post("/v1/predict", json={"adapter": "reg2", "inputs": ["good"]})
        assert gone.status_code == 404

    run(tiny_bert_dir, {"cls3": adapter_dirs["cls3"]}, body, token="s3cret")


def test_embed_health_metrics_and_docs(tiny_bert_dir, adapter_dirs):
    async def body(client, engine):
        base = await client.post("/v1/embed", json={"inputs": ["a good film", "bad"]})
        adapted = await client.post(
            "/v1/embed", json={"adapter": "cls3", "inputs": ["a good film"], "pooling": "first"}
        )
        assert base.status_code == adapted.status_code == 200
        assert len(base.json()["embeddings"]) == 2 and len(base.json()["embeddings"][0]) == 32
        assert base.json()["adapter"] is None and adapted.json()["adapter"] == "cls3"
        assert (await client.post("/v1/embed", json={"inputs": ["x"], "pooling": "max"})).status_code == 422
        text = (await client.get("/metrics")).text
        assert 'adapterhub_requests_total{endpoint="/v1/embed",status="200"} 2' in text
        assert 'adapterhub_requests_total{endpoint="/v1/embed",status="422"} 1' in text
        assert "adapterhub_adapter_loads_total 1" in text and "adapterhub_batch_rows_count" in text
        assert "adapterhub_request_seconds_bucket" in text and "adapterhub_queue_seconds_sum" in text
        assert (await client.get("/docs")).status_code == 200
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/v1/predict", "/v1/embed", "/v1/generate", "/v1/completions", "/v1/adapters"} <= set(paths)

    run(tiny_bert_dir, adapter_dirs, body)


def test_graceful_shutdown_answers_queued_requests(tiny_bert_dir, adapter_dirs):
    async def main() -> None:
        engine = ServingEngine.from_pretrained(
            str(tiny_bert_dir),
            adapters={k: str(v) for k, v in adapter_dirs.items()},
            config=EngineConfig(max_wait_ms=5000),
        )
        app = create_app(engine)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            async with app.router.lifespan_context(app):
                await engine.load("cls3")
                pending = [
                    asyncio.create_task(client.post("/v1/predict", json={"adapter": "cls3", "inputs": [t]}))
                    for t in ("a", "good", "film")
                ]
                while engine.scheduler.queued_rows < 3:
                    await asyncio.sleep(0.01)
            # lifespan ended (shutdown) while the requests waited for a 5 s batching window
            responses = await asyncio.gather(*pending)
            assert [r.status_code for r in responses] == [200, 200, 200]
            late = await client.post("/v1/predict", json={"adapter": "cls3", "inputs": ["x"]})
            assert late.status_code == 503

    asyncio.run(main())

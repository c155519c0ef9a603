"""serve-model's generation through the continuous-batching engine: greedy tokens equal transformers' generate() on
the same adapter (tied head, and an untied head of the adapter's own), prompts of different lengths together equal
each alone, concurrent requests share steps, a stream closed early frees its sequences and pin, and /v1/completions
answers as OpenAI's API does."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import torch
import transformers

import adapterhub
from adapterhub.serving.app import create_app
from adapterhub.serving.engine import EngineConfig, ServingEngine
from tiny_models import perturb


def _engine(gpt2) -> ServingEngine:
    directory, adapter = gpt2
    return ServingEngine.from_pretrained(
        str(directory), adapters={"lm": str(adapter), "cls": str(adapter)}, config=EngineConfig(max_wait_ms=1)
    )


@pytest.fixture(scope="module")
def own_head_adapter(tiny_gpt2_dir, tmp_path_factory):
    """A LoRA adapter with an untied causal-LM head of its own (perturbed): its logits differ from the model's."""
    directory, _ = tiny_gpt2_dir
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(directory)).eval())
    model.add_adapter("own", config="lora")
    perturb(model._adapterhub.adapters["own"], std=0.2, seed=5)
    model.add_causal_lm_head("own", tie_weights=False)
    perturb(model.heads["own"], std=0.5, seed=6)
    return model.save_adapter(tmp_path_factory.mktemp("own-head") / "own", "own")


@pytest.mark.parametrize("which", ["lm", "own"])
def test_greedy_generation_equals_transformers_generate(tiny_gpt2_dir, own_head_adapter, which):
    directory, lm = tiny_gpt2_dir
    adapter = lm if which == "lm" else own_head_adapter
    prompts = ["the movie was", "good"]
    engine = ServingEngine.from_pretrained(
        str(directory), adapters={which: str(adapter)}, config=EngineConfig(max_wait_ms=1)
    )
    assert engine.generation is not None  # a decoder: loaded with its LM head, one generation engine

    async def main():
        await engine.start()
        together = await engine.generate(prompts, adapter=which, max_new_tokens=6)
        alone = [await engine.generate([p], adapter=which, max_new_tokens=6) for p in prompts]
        await engine.shutdown()
        return together, alone

    together, alone = asyncio.run(main())
    assert together["token_ids"] == [a["token_ids"][0] for a in alone]
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(directory)).eval())
    model.load_adapter(adapter, set_active=True)
    for prompt, ids in zip(prompts, together["token_ids"], strict=True):
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=2)
        expected = out[0, enc["input_ids"].shape[1] :].tolist()
        assert ids == expected[: len(ids)] and (len(ids) == 6 or ids[-1] == 2)


def test_sampling_is_reproducible_with_a_seed(tiny_gpt2_dir):
    engine = _engine(tiny_gpt2_dir)

    async def main():
        await engine.start()
        runs = [
            await engine.generate(["the"], adapter="lm", max_new_tokens=8, temperature=1.5, seed=7)
            for _ in range(2)
        ]
        await engine.shutdown()
        return runs

    first, second = asyncio.run(main())
    assert first["token_ids"] == second["token_ids"]


def test_completions_endpoint(tiny_gpt2_dir):
    engine = _engine(tiny_gpt2_dir)
    app = create_app(engine)

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                body = {"model": "lm", "prompt": "the movie", "max_tokens": 4, "temperature": 0}
                done = await client.post("/v1/completions", json=body)
                generated = await client.post(
                    "/v1/generate", json={"adapter": "lm", "inputs": ["the movie"], "max_new_tokens": 4}
                )
                streamed = await client.post("/v1/completions", json={**body, "stream": True})
                streamed_missing = await client.post(
                    "/v1/completions", json={**body, "stream": True, "model": "nope"}
                )
                unknown = await client.post("/v1/completions", json={**body, "model": "lmm"})
                return done, generated, streamed, unknown, streamed_missing

    done, generated, streamed, unknown, streamed_missing = asyncio.run(main())
    assert done.status_code == 200, done.text
    payload = done.json()
    assert payload["object"] == "text_completion" and payload["model"] == "lm"
    assert payload["choices"][0]["text"] == generated.json()["texts"][0]
    assert payload["choices"][0]["finish_reason"] in ("stop", "length")
    usage = payload["usage"]
    assert usage["prompt_tokens"] == 2 and usage["total_tokens"] == 2 + usage["completion_tokens"]
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in streamed.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == payload["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == payload["choices"][0]["finish_reason"]
    assert all(c["id"] == chunks[0]["id"] and c["object"] == "text_completion" for c in chunks)
    assert streamed_missing.status_code == 404  # errors arrive before the stream starts
    error = unknown.json()["error"]  # the OpenAI error shape on the OpenAI routes
    assert unknown.status_code == 404 and "'lm'" in error["message"] and error["code"] == "model_not_found"


def test_concurrent_requests_share_steps(tiny_gpt2_dir):
    """Two requests sent together decode in the same forward passes (sequences of one step: rows, or segments of
    the packed row, the default), each with its own tokens."""
    engine = _engine(tiny_gpt2_dir)
    assert engine.generation is not None
    generation = engine.generation.engine
    rows: list[int] = []  # sequences per step
    build = generation._build_step

    def count(sequences):
        rows.append(len(sequences))
        return build(sequences)

    def record(module, args, kwargs):
        if len(rows) == 1:
            time.sleep(0.2)  # the second request arrives while the first step runs: it joins the next one

    generation._build_step = count  # type: ignore[method-assign]
    hook = engine.model.register_forward_pre_hook(record, with_kwargs=True)

    async def main():
        await engine.start()
        await engine.load("lm")
        alone = await engine.generate(["good"], adapter="lm", max_new_tokens=5)
        rows.clear()
        first = asyncio.create_task(engine.generate(["the movie was"], adapter="lm", max_new_tokens=5))
        await asyncio.sleep(0.05)
        second = await engine.generate(["good"], adapter="lm", max_new_tokens=5)
        await first
        await engine.shutdown()
        return alone, second

    try:
        alone, second = asyncio.run(main())
    finally:
        hook.remove()
    assert max(rows) == 2 and len(rows) < 10
    assert second["token_ids"] == alone["token_ids"]


def test_a_stream_closed_early_frees_its_sequences(tiny_gpt2_dir):
    engine = _engine(tiny_gpt2_dir)
    ended: list[str] = []

    async def main():
        await engine.start()
        whole = await engine.generate(["the", "good"], adapter="lm", max_new_tokens=20)
        scheduler = engine.generation.engine._scheduler
        leave = scheduler.leave

        def record(seq, status, error=None):
            leave(seq, status, error)
            ended.append(status)

        scheduler.leave = record
        stream = engine.generate_stream(["the", "good"], adapter="lm", max_new_tokens=20)
        await anext(stream)
        await stream.aclose()
        for _ in range(100):
            stats = engine.generation.engine.stats()
            if stats["running"] == stats["waiting"] == 0:
                break
            await asyncio.sleep(0.01)
        pins = dict(engine.registry._pins)
        await engine.shutdown()
        return whole, stats, pins

    whole, stats, pins = asyncio.run(main())
    assert whole["finish_reasons"] == ["length", "length"]  # left alone, both would run 20 steps
    assert ended == ["cancelled", "cancelled"]
    assert stats == {"waiting": 0, "running": 0, "cache_tokens": 0, "reserved_tokens": 0, "preempted": 0}
    assert not any(pins.values())


def test_openai_routes_answer_400_and_429_in_openai_shape_own_routes_422(tiny_gpt2_dir):
    directory, adapter = tiny_gpt2_dir
    engine = ServingEngine.from_pretrained(
        str(directory), adapters={"lm": str(adapter)}, config=EngineConfig(max_queue_rows=2)
    )
    app = create_app(engine)

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                full = await client.post("/v1/completions", json={"model": "lm", "prompt": "the", "n": 5})
                extra = await client.post(
                    "/v1/completions", json={"model": "lm", "prompt": "the", "best_of": 2}
                )
                no_json = await client.post(
                    "/v1/chat/completions", content=b"{", headers={"content-type": "application/json"}
                )
                own = await client.post(
                    "/v1/generate", json={"adapter": "lm", "inputs": ["the"], "best_of": 2}
                )
                wrong_method = await client.delete("/v1/models")
                return full, extra, no_json, own, wrong_method

    full, extra, no_json, own, wrong_method = asyncio.run(main())
    assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["code"] == "rate_limit_exceeded"
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "best_of"
    assert no_json.status_code == 400 and no_json.json()["error"]["type"] == "invalid_request_error"
    assert own.status_code == 422 and isinstance(own.json()["detail"], list)
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()

"""Generation with an adapter's causal-LM head: greedy tokens equal transformers' generate() on the same adapter,
batched prompts of different lengths equal each prompt alone, and /v1/completions answers as OpenAI's API does."""

from __future__ import annotations

import asyncio
import json

import httpx
import torch
import transformers

import adapterhub
from adapterhub.serving.app import create_app
from adapterhub.serving.engine import EngineConfig, ServingEngine


def _engine(gpt2) -> ServingEngine:
    directory, adapter = gpt2
    return ServingEngine.from_pretrained(
        str(directory), adapters={"lm": str(adapter), "cls": str(adapter)}, config=EngineConfig(max_wait_ms=1)
    )


def test_greedy_generation_equals_transformers_generate(tiny_gpt2_dir):
    directory, adapter = tiny_gpt2_dir
    prompts = ["the movie was", "good"]
    engine = _engine(tiny_gpt2_dir)

    async def main():
        await engine.start()
        together = await engine.generate(prompts, adapter="lm", max_new_tokens=6)
        alone = [await engine.generate([p], adapter="lm", max_new_tokens=6) for p in prompts]
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
    assert unknown.status_code == 404 and "'lm'" in unknown.json()["detail"]

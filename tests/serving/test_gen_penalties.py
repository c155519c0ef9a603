"""Penalties per request in the generation engine (tiny random Llama, float32): greedy and seeded sampling with
``repetition_penalty`` equal transformers' ``generate(repetition_penalty=...)`` token for token, rows with
different penalties (and none) mixed with LoRA rows in one staggered batch; ``presence_penalty`` /
``frequency_penalty`` (OpenAI's definition) equal ``generate`` with a logits processor written from that
definition; the OpenAI ``/v1/completions`` route takes them (and refuses values outside [-2, 2])."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import torch
import transformers

import adapterhub
from adapterhub.errors import ConfigError
from adapterhub.serving import GenerationEngine
from adapterhub.serving.app import create_app
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.serving.gen_penalties import penalize_row
from adapterhub.serving.sampling import SamplingParams

NEW = 12


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in (3, 8, 5, 11, 4, 6)]


class OpenAIPenalties(transformers.LogitsProcessor):
    """OpenAI's presence / frequency penalties over the generated tokens (those after ``prompt_length``)."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = scores.clone()
        for row, ids in enumerate(input_ids[:, self.prompt_length :].tolist()):
            for token in set(ids):
                out[row, token] -= self.frequency * ids.count(token) + self.presence
        return out


def reference(
    model: Any, prompt: list[int], adapter: str | None, seed: int | None = None, **kw: Any
) -> list[int]:
    """``model.generate`` for the prompt alone with the adapter alone; ``presence`` / ``frequency`` through
    ``OpenAIPenalties``; ``seed``: sampled with the global generator seeded."""
    presence, frequency = kw.pop("presence_penalty", 0.0), kw.pop("frequency_penalty", 0.0)
    processors = transformers.LogitsProcessorList()
    if presence or frequency:
        processors.append(OpenAIPenalties(len(prompt), presence, frequency))
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=NEW, do_sample=seed is not None, pad_token_id=0,
            logits_processor=processors, **kw,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def run_staggered(engine: GenerationEngine, plan: list[tuple[int, list[int], str | None, dict]]) -> list[Any]:
    handles: list[Any] = [None] * len(plan)
    step = 0
    while any(h is None for h in handles) or any(h.status != "finished" for h in handles):
        for i, (at, prompt, adapter, kw) in enumerate(plan):
            if handles[i] is None and at <= step:
                handles[i] = engine.submit(prompt, adapter=adapter, max_new_tokens=NEW, **kw)
        engine.step()
        step += 1
    return handles


ROWS = [
    {"repetition_penalty": 1.8},
    {},
    {"repetition_penalty": 0.6},
    {"presence_penalty": 1.5},
    {"frequency_penalty": 1.2},
    {"presence_penalty": 0.7, "frequency_penalty": 0.9, "repetition_penalty": 1.3},
]


def test_greedy_penalties_per_row_in_a_mixed_batch_equal_generate(llama, prompts):
    adapters = ["a", None, "b", "a", None, "b"]
    for kw, prompt, adapter in zip(ROWS, prompts, adapters, strict=True):
        if kw:  # every penalty changes the greedy completion of its prompt
            assert reference(llama, prompt, adapter, **kw) != reference(llama, prompt, adapter), kw
    engine = GenerationEngine(llama, max_num_seqs=8, stop_ids=[])
    plan = [(i // 2, prompts[i], adapters[i], ROWS[i]) for i in range(len(ROWS))]
    handles = run_staggered(engine, plan)
    for handle, (_, prompt, adapter, kw) in zip(handles, plan, strict=True):
        assert handle.result() == reference(llama, prompt, adapter, eos_token_id=None, **kw), kw


def test_seeded_sampling_with_repetition_penalty_equals_generate(llama, prompts):
    kw = {"temperature": 0.9, "top_k": 30, "repetition_penalty": 1.4}
    engine = GenerationEngine(llama, max_num_seqs=8, stop_ids=[])
    handles = [
        engine.submit(p, adapter=a, max_new_tokens=NEW, seed=40 + i, **kw)
        for i, (p, a) in enumerate(zip(prompts[:3], ["a", None, "b"], strict=True))
    ]
    for i, (handle, prompt, adapter) in enumerate(zip(handles, prompts, ["a", None, "b"], strict=False)):
        expected = reference(llama, prompt, adapter, seed=40 + i, eos_token_id=None, **kw)
        assert handle.result() == expected


def test_penalize_row_follows_both_definitions():
    scores = torch.tensor([2.0, -1.0, 0.5, 3.0, -2.0])
    params = SamplingParams(repetition_penalty=2.0, presence_penalty=0.5, frequency_penalty=0.25)
    penalize_row(scores, params, prompt=[0, 1], tokens=[3, 3, 1])
    # repetition over {0, 1, 3}: 2/2, -1*2, 3/2; then new tokens 3 (twice) and 1 (once)
    expected = torch.tensor([1.0, -2.0 - 0.25 - 0.5, 0.5, 1.5 - 0.5 - 0.5, -2.0])
    torch.testing.assert_close(scores, expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"repetition_penalty": -1.0}, "repetition_penalty"),
        ({"presence_penalty": float("nan")}, "presence_penalty"),
        ({"frequency_penalty": "1"}, "frequency_penalty"),
        ({"frequency_penaltyy": 1.0}, "frequency_penalty"),
    ],
)
def test_bad_penalties_are_refused_at_submit(llama, prompts, kwargs, match):
    engine = GenerationEngine(llama)
    with pytest.raises(ConfigError, match=match):
        engine.submit(prompts[0], **kwargs)
    assert engine.stats()["waiting"] == 0


def test_openai_completions_route_takes_presence_and_frequency_penalties(tiny_gpt2_dir):
    directory, adapter = tiny_gpt2_dir
    engine = ServingEngine.from_pretrained(
        str(directory), adapters={"lm": str(adapter)}, config=EngineConfig(max_wait_ms=1)
    )
    app = create_app(engine)
    penalties = {"presence_penalty": 1.5, "frequency_penalty": 0.8}
    body = {"model": "lm", "prompt": "the movie was", "max_tokens": NEW, "temperature": 0}

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                return [
                    await client.post("/v1/completions", json={**body, **penalties}),
                    await client.post("/v1/completions", json=body),
                    await client.post("/v1/completions", json={**body, "presence_penalty": 2.5}),
                    await client.post("/v1/completions", json={**body, "repetition_penalty": 0}),
                ]

    penalized, plain, too_big, zero = asyncio.run(main())
    assert penalized.status_code == 200, penalized.text
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(directory)).eval())
    model.load_adapter(adapter, set_active=True)
    enc = tokenizer(body["prompt"], return_tensors="pt")
    length = enc["input_ids"].shape[1]
    texts = []
    for kw in (penalties, {}):
        processors = transformers.LogitsProcessorList(
            [OpenAIPenalties(length, kw["presence_penalty"], kw["frequency_penalty"])] if kw else []
        )
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=2,
                logits_processor=processors,
            )  # fmt: skip
        texts.append(tokenizer.decode(out[0, length:].tolist(), skip_special_tokens=True))
    assert texts[0] != texts[1]  # the penalties change this completion
    assert penalized.json()["choices"][0]["text"] == texts[0]
    assert plain.json()["choices"][0]["text"] == texts[1]
    for refused in (too_big, zero):  # out of range: a 400 in OpenAI's error shape
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"


def test_project_generate_route_takes_repetition_penalty(tiny_gpt2_dir):
    directory, adapter = tiny_gpt2_dir
    engine = ServingEngine.from_pretrained(
        str(directory), adapters={"lm": str(adapter)}, config=EngineConfig(max_wait_ms=1)
    )
    app = create_app(engine)
    body = {"adapter": "lm", "inputs": ["the movie was"], "max_new_tokens": NEW, "repetition_penalty": 8.0}

    async def main() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
                return [
                    await client.post("/v1/generate", json=body),
                    await client.post("/v1/generate", json={**body, "repetition_penalty": 1.0}),
                    await client.post("/v1/generate", json={**body, "frequency_penalty": -3}),
                ]

    penalized, plain, bad = asyncio.run(main())
    assert penalized.status_code == 200, penalized.text
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = adapterhub.init(transformers.AutoModel.from_pretrained(str(directory)).eval())
    model.load_adapter(adapter, set_active=True)
    enc = tokenizer("the movie was", return_tensors="pt")
    expected = []
    for penalty in (8.0, 1.0):
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=NEW, do_sample=False, pad_token_id=0, eos_token_id=2,
                repetition_penalty=penalty,
            )  # fmt: skip
        expected.append(out[0, enc["input_ids"].shape[1] :].tolist())
    assert expected[0] != expected[1]
    assert penalized.json()["token_ids"] == [expected[0]]
    assert plain.json()["token_ids"] == [expected[1]]
    assert bad.status_code == 422  # the project's routes keep their 422

"""The OpenAI-compatible routes with the real ``openai`` client against the app in a real uvicorn server (a thread
of this process, a free localhost port): a tiny random Llama with a ChatML chat tokenizer and a LoRA adapter.

Chat and text completions (plain and streamed), an adapter picked by ``model``, ``n`` > 1, seeded repeatability,
logprobs, ``/v1/models``, the OpenAI errors (``BadRequestError`` for a bad request and for context length,
``NotFoundError`` for an unknown model), a streamed request whose client goes away (its sequence is freed), and a
greedy chat completion equal to transformers' ``generate`` on the same prompt with the same adapter."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
import transformers

import adapterhub
from adapterhub.serving.background import BackgroundServer
from adapterhub.serving.engine import EngineConfig, ServingEngine
from tiny_chat import chat_tokenizer, save_chat_llama
from tiny_models import perturb

WORDS = "the a movie film plot is was and but not very good bad great fun dull it i liked who what system user assistant"
CONTEXT = 64


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random Llama + chat tokenizer saved to a directory, and a LoRA adapter (no head) for it."""
    directory = tmp_path_factory.mktemp("chat-llama")
    save_chat_llama(directory, WORDS.split(), context=CONTEXT)
    model = adapterhub.init(transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval())
    model.add_adapter("poems", config="lora")
    perturb(model._adapterhub.adapters["poems"], std=0.3, seed=3)
    return directory, model.save_adapter(directory / "adapters" / "poems", "poems")


@pytest.fixture(scope="module")
def server(chat_llama: tuple[Path, Path]) -> Any:
    directory, adapter = chat_llama
    engine = ServingEngine.from_pretrained(
        str(directory),
        adapters={"poems": str(adapter)},
        config=EngineConfig(max_num_seqs=8, max_batch_tokens=256),
    )
    with BackgroundServer(engine) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


MESSAGES = [
    {"role": "system", "content": "i liked the movie"},
    {"role": "user", "content": "what is the plot"},
]


def test_greedy_chat_equals_transformers_generate_with_the_adapter(client, server, chat_llama):
    directory, adapter = chat_llama
    done = client.chat.completions.create(model="poems", messages=MESSAGES, max_tokens=8, temperature=0)
    choice = done.choices[0]
    assert done.object == "chat.completion" and done.model == "poems" and choice.message.role == "assistant"

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    model = adapterhub.init(transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval())
    model.load_adapter(adapter, set_active=True)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    new = out[0, ids.shape[1] :].tolist()
    assert choice.message.content == tokenizer.decode(new, skip_special_tokens=True)
    assert done.usage.prompt_tokens == ids.shape[1] and done.usage.completion_tokens == len(new)
    assert choice.finish_reason == ("stop" if new[-1] == tokenizer.eos_token_id else "length")

    base = client.chat.completions.create(
        model=server.engine.model_id, messages=MESSAGES, max_tokens=8, temperature=0
    )
    with torch.no_grad(), model.adapter_setup(None):
        plain = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    assert base.choices[0].message.content == tokenizer.decode(
        plain[0, ids.shape[1] :], skip_special_tokens=True
    )
    assert base.choices[0].message.content != choice.message.content  # the adapter changes the answer


def test_streamed_chat_equals_the_plain_answer(client):
    plain = client.chat.completions.create(model="poems", messages=MESSAGES, max_tokens=10, temperature=0)
    stream = client.chat.completions.create(
        model="poems", messages=MESSAGES, max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [plain.choices[0].finish_reason]
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    )


def test_n_seed_and_logprobs(client):
    def sample(seed: int) -> Any:
        return client.chat.completions.create(
            model="poems", messages=MESSAGES, max_tokens=6, temperature=1.5, seed=seed, n=3, logprobs=True
        )

    first, again, other = sample(7), sample(7), sample(8)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]  # seeded: repeatable
    assert len(set(texts)) > 1  # n independent sequences (seeds 7, 8, 9)
    assert texts[1:] == [c.message.content for c in other.choices][:2]  # choice j draws with seed + j
    for choice in first.choices:
        assert choice.logprobs is not None and all(t.logprob <= 0 for t in choice.logprobs.content)
    assert first.usage.completion_tokens == sum(len(c.logprobs.content) for c in first.choices)


def test_text_completions_plain_and_streamed(client, server):
    done = client.completions.create(
        model="poems", prompt=["the movie was", "i liked"], max_tokens=5, temperature=0
    )
    assert done.object == "text_completion" and [c.index for c in done.choices] == [0, 1]
    streamed = client.completions.create(
        model="poems", prompt="the movie was", max_tokens=5, temperature=0, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason
    models = client.models.list()
    assert [m.id for m in models.data] == [server.engine.model_id, "poems"]
    assert client.models.retrieve("poems").id == "poems"


def test_openai_errors(client, server):
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="peoms", messages=MESSAGES)
    error = unknown.value.body
    assert error["code"] == "model_not_found" and "'poems'" in error["message"]
    assert server.engine.model_id in error["message"]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="poems", messages=[{"role": "robot", "content": "hi"}])
    assert bad.value.status_code == 400 and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="poems", messages=MESSAGES, temperature=-1)
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="poems", messages=MESSAGES, max_tokens=CONTEXT)
    assert long.value.body["code"] == "context_length_exceeded" and long.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as long_prompt:
        client.completions.create(model="poems", prompt="the movie " * CONTEXT, max_tokens=1)
    assert long_prompt.value.body["code"] == "context_length_exceeded"
    assert long_prompt.value.body["param"] == "prompt"
    # the project's own routes keep their 422 and {"detail"}
    own = httpx.post(server.url + "/v1/generate", json={"inputs": ["the"], "max_new_tokens": 0})
    assert own.status_code == 422 and "detail" in own.json()


def test_a_client_that_goes_away_frees_its_sequence(server, client, monkeypatch):
    body = {"model": "poems", "prompt": "the movie", "max_tokens": 40, "temperature": 0}
    whole = client.completions.create(**body)
    assert whole.choices[0].finish_reason == "length"  # greedy, it would run all 40 steps
    engine = server.engine.generation.engine
    ended: list[str] = []
    leave = engine._scheduler.leave

    def record(seq, status, error=None):
        leave(seq, status, error)
        ended.append(status)

    monkeypatch.setattr(engine._scheduler, "leave", record)
    with httpx.stream(
        "POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=30
    ) as response:
        assert response.status_code == 200
        next(response.iter_lines())  # the first token arrived; then the client goes away
    for _ in range(300):
        stats = engine.stats()
        if stats["running"] == stats["waiting"] == 0 and ended:
            break
        time.sleep(0.01)
    assert ended == ["cancelled"]
    assert stats == {"waiting": 0, "running": 0, "cache_tokens": 0, "reserved_tokens": 0, "preempted": 0}


def test_an_adapter_with_its_own_tokenizer_uses_its_chat_template(client, server, chat_llama, tmp_path):
    import shutil

    _, adapter = chat_llama
    styled = tmp_path / "styled"
    shutil.copytree(adapter, styled)
    tokenizer = chat_tokenizer(WORDS.split())
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(str(styled))
    added = httpx.post(
        server.url + "/v1/adapters", json={"name": "styled", "source": str(styled)}, timeout=30
    )
    assert added.status_code == 200, added.text
    done = client.chat.completions.create(model="styled", messages=MESSAGES, max_tokens=3, temperature=0)
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == "i liked the movie\nwhat is the plot\n"
    assert done.usage.prompt_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 10
    base = client.chat.completions.create(model="poems", messages=MESSAGES, max_tokens=3, temperature=0)
    assert base.usage.prompt_tokens != done.usage.prompt_tokens  # poems: the base tokenizer's ChatML template


@pytest.fixture(scope="module")
def reference(chat_llama: tuple[Path, Path]) -> tuple[Any, Any]:
    """transformers' model with the ``poems`` adapter loaded (not active) and the tokenizer."""
    directory, adapter = chat_llama
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    model = adapterhub.init(transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval())
    model.load_adapter(adapter)
    return model, tokenizer


def reference_top(
    reference: Any, prompt: list[int], adapter: str | None, k: int
) -> list[list[tuple[str, float]]]:
    """Greedy ``generate`` from ``prompt``; at each new position, ``torch.topk(log_softmax(logits), k)`` as
    ``(token text, logprob)`` pairs (the first is the chosen token)."""
    model, tokenizer = reference
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=6, do_sample=False, eos_token_id=tokenizer.eos_token_id,
            output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    tops = []
    for logits in out.logits:  # (1, V) per new position
        values, ids = torch.topk(torch.log_softmax(logits[0].float(), dim=-1), k)
        tops.append([(tokenizer.decode([i]), v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)])
    return tops


def chat_ids(tokenizer: Any) -> list[int]:
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_chat_top_logprobs_plain_and_streamed_equal_transformers(client, reference):
    expected = reference_top(reference, chat_ids(reference[1]), "poems", 3)
    kw = {"model": "poems", "messages": MESSAGES, "max_tokens": 6, "temperature": 0, "logprobs": True}
    done = client.chat.completions.create(**kw, top_logprobs=3)
    content = done.choices[0].logprobs.content
    assert len(content) == len(expected) == done.usage.completion_tokens
    for position, want in zip(content, expected, strict=True):
        assert [t.token for t in position.top_logprobs] == [text for text, _ in want]
        assert [t.logprob for t in position.top_logprobs] == pytest.approx([v for _, v in want], abs=1e-4)
        assert all(t.bytes == list(t.token.encode()) for t in position.top_logprobs)
        assert position.token == want[0][0] and position.logprob == position.top_logprobs[0].logprob
    stream = client.chat.completions.create(**kw, top_logprobs=3, stream=True)
    streamed = [
        e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, [t.token for t in e.top_logprobs]) for e in streamed] == [
        (e.token, [t.token for t in e.top_logprobs]) for e in content
    ]
    assert [t.logprob for e in streamed for t in e.top_logprobs] == pytest.approx(
        [t.logprob for e in content for t in e.top_logprobs], abs=1e-5
    )
    plain = client.chat.completions.create(**kw)  # logprobs without alternatives: top_logprobs []
    assert all(e.top_logprobs == [] for e in plain.choices[0].logprobs.content)


def test_completion_logprobs_n_plain_and_streamed_equal_transformers(client, server, reference):
    prompt = "the movie was"
    expected = reference_top(reference, list(reference[1](prompt)["input_ids"]), None, 4)
    kw = {"model": server.engine.model_id, "prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 4}
    done = client.completions.create(**kw)
    logprobs = done.choices[0].logprobs
    assert len(logprobs.top_logprobs) == len(expected) == len(logprobs.tokens)
    for token, lp, top, want in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, expected, strict=True
    ):
        assert list(top) == [text for text, _ in want]  # the chosen token is the first: no extra entry
        assert list(top.values()) == pytest.approx([v for _, v in want], abs=1e-4)
        assert token == want[0][0] and top[token] == lp
    stream = client.completions.create(**kw, stream=True)
    streamed = [t for c in stream if c.choices[0].logprobs for t in c.choices[0].logprobs.top_logprobs]
    assert [list(t) for t in streamed] == [list(t) for t in logprobs.top_logprobs]
    zero = client.completions.create(**{**kw, "logprobs": 0})
    assert (
        zero.choices[0].logprobs.top_logprobs is None and zero.choices[0].logprobs.tokens == logprobs.tokens
    )


def test_sampled_completion_top_logprobs_list_the_chosen_token(client):
    done = client.completions.create(
        model="poems", prompt="i liked", max_tokens=6, temperature=1.0, seed=3, logprobs=2, n=2
    )
    for choice in done.choices:
        lp = choice.logprobs
        for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
            assert (
                2 <= len(top) <= 3 and top[token] == logprob
            )  # the 2 likeliest, and the chosen one if other


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ("chat", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ("chat", {"top_logprobs": 2}, None),
        ("completions", {"logprobs": 21}, "logprobs"),
        ("completions", {"logprobs": -1}, "logprobs"),
    ],
)
def test_out_of_range_top_logprobs_answer_400(client, route, body, param):
    with pytest.raises(openai.BadRequestError) as bad:
        if route == "chat":
            client.chat.completions.create(model="poems", messages=MESSAGES, max_tokens=2, **body)
        else:
            client.completions.create(model="poems", prompt="the", max_tokens=2, **body)
    error = bad.value.body
    assert bad.value.status_code == 400 and error["type"] == "invalid_request_error"
    assert error["param"] == param and ("logprobs" in error["message"])

"""Sampling per request in the generation engine on a tiny random Llama (float32): a seeded request gets the same
tokens alone, in a staggered mixed batch and from ``model.generate(do_sample=True)``; the processed distribution
equals transformers' warpers; stop strings, ``n``, logprobs and every parameter error at submit."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from adapterhub.errors import ConfigError
from adapterhub.serving import GenerationEngine
from adapterhub.serving.sampling import SamplingParams, process_logits

NEW = 8
SAMPLED = {"temperature": 0.8, "top_k": 20, "top_p": 0.9}


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in (3, 8, 5, 11, 4, 6)]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    pytest.importorskip("tokenizers")
    from tiny_chat import chat_tokenizer

    tok = chat_tokenizer([f"w{i}" for i in range(95)])  # ids 4..98 are the words w0..w94
    assert len(tok) == 99
    return tok


def hf_sample(model: Any, prompt: list[int], adapter: str | None, seed: int, **params: Any) -> list[int]:
    """``model.generate(do_sample=True)`` with the global generator seeded: the reference of a seeded request."""
    torch.manual_seed(seed)
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(
            torch.tensor([prompt]), do_sample=True, max_new_tokens=NEW, pad_token_id=0, **params
        )
    return out[0, len(prompt) :].tolist()


def greedy(model: Any, prompt: list[int], adapter: str | None, new: int = NEW) -> list[int]:
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


def test_seeded_request_alone_in_a_staggered_mixed_batch_and_generate_agree(llama, prompts):
    engine = GenerationEngine(llama, max_num_seqs=8)
    alone = engine.generate([prompts[1]], adapters=["a"], max_new_tokens=NEW, seed=123, **SAMPLED)[0]
    assert alone == hf_sample(llama, prompts[1], "a", 123, **SAMPLED)
    # the same request joining at step 2 among greedy and other sampled rows, other adapters and the base
    others = [
        (0, prompts[0], "b", {}),
        (0, prompts[2], None, {"temperature": 1.3, "seed": 5}),
        (2, prompts[1], "a", {"seed": 123, **SAMPLED}),
        (3, prompts[3], "a", {"temperature": 0.5, "top_p": 0.5}),  # unseeded
        (4, prompts[4], None, {}),
    ]
    handles: list[Any] = [None] * len(others)
    step = 0
    while any(h is None or h.status != "finished" for h in handles):
        for i, (at, prompt, adapter, params) in enumerate(others):
            if handles[i] is None and at <= step:
                handles[i] = engine.submit(prompt, adapter=adapter, max_new_tokens=NEW, **params)
        engine.step()
        step += 1
    assert handles[2].result() == alone
    assert handles[0].result() == greedy(llama, prompts[0], "b")  # greedy rows are unchanged by sampled ones
    assert handles[4].result() == greedy(llama, prompts[4], None)
    assert handles[1].result() == hf_sample(llama, prompts[2], None, 5, temperature=1.3, top_k=0)


def test_different_seeds_differ_and_the_same_seed_repeats(llama, prompts):
    engine = GenerationEngine(llama)
    outs = [engine.generate([prompts[0]], max_new_tokens=NEW, temperature=1.0, seed=s)[0] for s in range(5)]
    assert len({tuple(o) for o in outs}) > 1
    assert engine.generate([prompts[0]], max_new_tokens=NEW, temperature=1.0, seed=3)[0] == outs[3]


def test_top_k_1_is_greedy(llama, prompts):
    engine = GenerationEngine(llama)
    for seed, adapter in ((0, "a"), (1, None)):
        out = engine.generate(
            [prompts[2]], adapters=[adapter], max_new_tokens=NEW, temperature=1.7, top_k=1, seed=seed
        )
        assert out[0] == greedy(llama, prompts[2], adapter)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 1.0},
        {"temperature": 0.7},
        {"temperature": 1.3, "top_k": 5},
        {"temperature": 0.9, "top_p": 0.6},
        {"temperature": 0.5, "top_k": 10, "top_p": 0.8},
        {
            "temperature": 2.0,
            "top_k": 200,
            "top_p": 0.01,
        },  # top_k above the vocabulary; top_p keeps one token
    ],
)
def test_processed_distribution_equals_transformers_warpers(params):
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3  # (R, V)
    warpers = LogitsProcessorList([TemperatureLogitsWarper(params["temperature"])])
    if "top_k" in params:
        warpers.append(TopKLogitsWarper(params["top_k"]))
    if "top_p" in params:
        warpers.append(TopPLogitsWarper(params["top_p"]))
    expected = torch.softmax(warpers(torch.zeros(3, 1, dtype=torch.long), logits.clone()), dim=-1)
    got = torch.softmax(process_logits(logits, SamplingParams(**params)), dim=-1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
    assert ((got > 0).sum(-1) >= 1).all()
    if "top_k" in params and params["top_k"] < 50:
        assert ((got > 0).sum(-1) <= params["top_k"]).all()


def test_stop_strings_cut_before_the_stop_and_never_stream_what_is_cut(llama, prompts, tokenizer):
    engine = GenerationEngine(llama, tokenizer=tokenizer)
    prompt, sampled = prompts[3], {"temperature": 1.0, "max_new_tokens": NEW, "stop_ids": []}
    # a seed whose completion starts with four different words (ids >= 4) of the tiny tokenizer
    outs = [(s, engine.generate([prompt], adapters=["a"], seed=s, **sampled)[0]) for s in range(10)]
    seed, full = next((s, out) for s, out in outs if len({t for t in out[:4] if t >= 4}) == 4)
    words = tokenizer.convert_ids_to_tokens(full)
    # a whole word, and a stop string that begins inside a token (its last character) and ends in the next
    for stop in (words[2], words[2][-1] + " " + words[3][:2]):
        assert stop not in tokenizer.decode(full[:2]), stop
        handle = engine.submit(prompt, adapter="a", seed=seed, stop=[stop, "never"], **sampled)
        assert handle.tokens == []
        streamed = list(handle)
        assert handle.result() == streamed == full[:2], stop
        assert handle.finish_reason == "stop"
    # a request brings its own tokenizer; a stop string that never occurs runs to max_new_tokens
    plain = GenerationEngine(llama)
    handle = plain.submit(prompt, adapter="a", seed=seed, stop="zzz", tokenizer=tokenizer, **sampled)
    assert handle.result() == full and handle.finish_reason == "length"
    with pytest.raises(ConfigError, match="need a tokenizer"):
        plain.submit(prompt, stop=["w1"])


class BrokenTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        raise ValueError("cannot decode")


def test_a_tokenizer_that_fails_fails_its_request_alone(llama, prompts):
    engine = GenerationEngine(llama)
    broken = engine.submit(prompts[0], max_new_tokens=NEW, stop="x", tokenizer=BrokenTokenizer())
    other = engine.submit(prompts[1], adapter="a", max_new_tokens=NEW)
    with pytest.raises(ValueError, match="cannot decode"):
        broken.result()
    assert broken.status == "failed" and broken.finish_reason == "failed"
    assert other.result() == greedy(llama, prompts[1], "a")
    assert engine.stats()["cache_tokens"] == 0


def test_n_independent_completions_with_consecutive_seeds(llama, prompts):
    engine = GenerationEngine(llama, max_num_seqs=8)
    handles = engine.submit_choices(prompts[0], n=3, adapter="b", max_new_tokens=NEW, temperature=1.0, seed=7)
    outs = [h.result() for h in handles]
    for j, out in enumerate(outs):
        assert out == hf_sample(llama, prompts[0], "b", 7 + j, temperature=1.0, top_k=0)
    assert len({tuple(o) for o in outs}) > 1
    flat = engine.generate(
        prompts[:2], adapters=["b", None], n=3, max_new_tokens=NEW, temperature=1.0, seed=7
    )
    assert len(flat) == 6 and flat[:3] == outs
    assert flat[3] == hf_sample(llama, prompts[1], None, 7, temperature=1.0, top_k=0)


@pytest.mark.parametrize("params", [{"temperature": 0.7, "top_k": 10, "top_p": 0.9}, {}])
def test_logprobs_are_log_softmax_of_the_processed_logits(llama, prompts, params):
    engine = GenerationEngine(llama)
    (done,) = engine.complete(
        [prompts[2]], adapters=["a"], max_new_tokens=NEW, seed=1, logprobs=True, **params
    )
    assert done.logprobs is not None and len(done.logprobs) == len(done.ids) == NEW
    assert done.finish_reason == "length"
    lp = torch.tensor(done.logprobs)
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    sp = SamplingParams(**params)
    with torch.no_grad(), llama.adapter_setup("a"):
        for j, token in enumerate(done.ids):
            logits = llama(input_ids=torch.tensor([prompts[2] + done.ids[:j]])).logits[:, -1]  # (1, V)
            expected = torch.log_softmax(process_logits(logits, sp), dim=-1)[0, token]
            assert abs(float(expected) - done.logprobs[j]) < 1e-4, j
    handle = engine.submit(prompts[2], max_new_tokens=2, temperature=1.0)
    assert handle.completion().logprobs is None
    with pytest.raises(ConfigError, match="logprobs=True"):
        handle.logprobs  # noqa: B018


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"temperature": "hot"}, "temperature must be"),
        ({"temperature": 1.0, "top_p": 0.0}, r"top_p must be a number in \(0, 1\]"),
        ({"temperature": 1.0, "top_p": 1.5}, r"top_p must be a number in \(0, 1\]"),
        ({"temperature": 1.0, "top_k": -1}, "top_k must be an integer >= 0"),
        ({"temperature": 1.0, "top_k": 2.5}, "top_k must be an integer"),
        ({"top_k": 5}, "temperature=0 is greedy"),
        ({"top_p": 0.5}, "temperature=0 is greedy"),
        ({"temperature": 1.0, "seed": -1}, "seed must be an integer"),
        ({"temperature": 1.0, "seed": "7"}, "seed must be an integer"),
        ({"stop": [""]}, "stop must be a string or a list of non-empty strings"),
        ({"stop": ""}, "A stop string is empty"),
        ({"stop": [3]}, "stop must be"),
        ({"logprobs": "yes"}, "logprobs must be True or False"),
        ({"temprature": 1.0}, r"Unknown sampling parameter.*did you mean 'temperature'.*Valid ones"),
        ({"n": 0}, r"n \(completions per prompt\) must be a positive integer"),
        ({"n": 2, "temperature": 1.0, "seed": 2**63 - 1}, r"seed \+ n - 1 must stay below 2\*\*63"),
        ({"tokenizer": object()}, "decode"),
        ({"stop": ["w1"]}, "need a tokenizer"),
    ],
)
def test_every_bad_parameter_is_refused_at_submit(llama, prompts, kwargs, match):
    engine = GenerationEngine(llama)
    with pytest.raises(ConfigError, match=match):
        engine.generate(prompts[:2], max_new_tokens=2, **kwargs)
    if "n" not in kwargs:
        with pytest.raises(ConfigError, match=match):
            engine.submit(prompts[0], max_new_tokens=2, **kwargs)
    assert engine.stats()["waiting"] == 0  # nothing of the batch was queued
    with pytest.raises(ConfigError, match="decode"):
        GenerationEngine(llama, tokenizer="gpt2")

"""Chunked prefill in the generation engine (tiny random Llama, float32): long prompts prefilled ``prefill_chunk``
tokens per step, mixed with LoRA and base rows arriving at different steps, give the tokens of the unchunked engine
and of ``model.generate`` alone; another sequence decodes in the steps between two chunks of a prompt; every step
stays within ``max_batch_tokens``; a prompt longer than ``max_batch_tokens`` runs only when chunked."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from adapterhub.errors import ConfigError
from adapterhub.serving import GenerationEngine

NEW = 6
LENGTHS = (29, 4, 17, 9, 23, 3)
ADAPTERS = ("a", None, "b", "a", None, "b")


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(3, 99, (n,), generator=generator).tolist() for n in LENGTHS]


def reference(model: Any, prompt: list[int], adapter: str | None) -> list[int]:
    with torch.no_grad(), model.adapter_setup(adapter):
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


def run_staggered(engine: GenerationEngine, prompts: list[list[int]]) -> tuple[list[list[int]], list[Any]]:
    """Submit prompt ``i`` at step ``i`` (while the earlier ones prefill or decode); step until all end."""
    handles: list[Any] = []
    infos = []
    while len(handles) < len(prompts) or any(h.status != "finished" for h in handles):
        if len(handles) < len(prompts):
            i = len(handles)
            handles.append(engine.submit(prompts[i], adapter=ADAPTERS[i], max_new_tokens=NEW))
        infos.append(engine.step())
    return [h.result() for h in handles], infos


@pytest.mark.parametrize("chunk", [1, 4, 7])
def test_chunked_prefill_equals_the_unchunked_engine_and_generate(llama, prompts, chunk):
    whole, _ = run_staggered(GenerationEngine(llama, max_num_seqs=8, max_batch_tokens=64), prompts)
    engine = GenerationEngine(llama, max_num_seqs=8, max_batch_tokens=12, prefill_chunk=chunk)
    chunked, infos = run_staggered(engine, prompts)
    assert chunked == whole
    for ids, prompt, adapter in zip(chunked, prompts, ADAPTERS, strict=True):
        assert ids == reference(llama, prompt, adapter)
    assert all(info is None or info.new_tokens <= 12 for info in infos)
    assert (
        sum(info.chunks for info in infos if info is not None) >= 2
    )  # the 29-token prompt took several steps
    assert engine.stats()["cache_tokens"] == 0 and engine.stats()["reserved_tokens"] == 0


def test_another_sequence_decodes_between_two_chunks_of_a_prompt(llama, prompts):
    engine = GenerationEngine(llama, max_num_seqs=4, prefill_chunk=5)
    short = engine.submit(prompts[1], adapter="b", max_new_tokens=12)
    engine.step()
    assert len(short.tokens) == 1  # prefilled (4 tokens, one chunk) and decoding
    long = engine.submit(prompts[0], adapter="a", max_new_tokens=NEW)  # 29 tokens: 6 chunks of <= 5
    cached = []
    for _ in range(6):
        before = len(short.tokens)
        info = engine.step()
        cached.append(long._seq.kv.length)
        assert len(short.tokens) == before + 1  # the short one decoded in this step
        assert info.new_tokens == 1 + (cached[-1] - (cached[-2] if len(cached) > 1 else 0))
    assert cached == [5, 10, 15, 20, 25, 29]
    assert long.tokens == reference(llama, prompts[0], "a")[:1]  # its first token after the last chunk
    assert long.result() == reference(llama, prompts[0], "a")
    assert short.result()[:NEW] == reference(llama, prompts[1], "b")


def test_a_prompt_longer_than_max_batch_tokens_needs_chunks(llama, prompts):
    with pytest.raises(ConfigError, match="prefill_chunk"):
        GenerationEngine(llama, max_batch_tokens=16).submit(prompts[0])
    engine = GenerationEngine(llama, max_num_seqs=2, max_batch_tokens=8, prefill_chunk=8)
    assert engine.generate([prompts[0]], adapters=["a"], max_new_tokens=NEW) == [
        reference(llama, prompts[0], "a")
    ]
    for bad, match in (
        ({"prefill_chunk": 0}, "positive"),
        ({"prefill_chunk": 9}, "at most max_batch_tokens"),
    ):
        with pytest.raises(ConfigError, match=match):
            GenerationEngine(llama, max_num_seqs=2, max_batch_tokens=8, **bad)


def test_cancel_mid_prefill_frees_the_cache_and_leaves_the_others_unchanged(llama, prompts):
    engine = GenerationEngine(llama, max_num_seqs=4, prefill_chunk=4)
    keep = engine.submit(prompts[1], adapter="b", max_new_tokens=NEW)
    gone = engine.submit(prompts[0], adapter="a", max_new_tokens=NEW)  # 29 tokens: 8 chunks
    for _ in range(3):
        engine.step()
    assert gone.status == "running" and gone._seq.kv.length == 12 and gone.tokens == []
    gone.cancel()
    assert gone.status == "cancelled" and gone.result() == []
    assert engine.stats()["cache_tokens"] == len(prompts[1]) + 2  # only the other one's cache is left
    assert keep.result() == reference(llama, prompts[1], "b")
    assert engine.stats()["reserved_tokens"] == 0


def test_seeded_sampling_and_logprobs_are_the_same_chunked_or_not(llama, prompts):
    kw = {"temperature": 0.8, "top_p": 0.9, "seed": 5, "logprobs": True}
    done = []
    for options in ({}, {"prefill_chunk": 3, "max_batch_tokens": 8}):
        engine = GenerationEngine(llama, max_num_seqs=4, **options)
        done.append(engine.complete(prompts[:3], adapters=list(ADAPTERS[:3]), max_new_tokens=NEW, **kw))
    for whole, chunked in zip(*done, strict=True):
        assert chunked.ids == whole.ids
        torch.testing.assert_close(chunked.logprobs, whole.logprobs)

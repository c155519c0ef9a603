"""Generation metrics on /metrics: token counters equal to the requests' ``usage``, per-model request and token
counts, time to first token / inter-token latency histograms with one observation per token, finish reasons,
running/waiting gauges read live from the engine, resident-adapter cache hits/misses/evictions per adapter, and a
time to first token that counts the adapter's load."""

from __future__ import annotations

import json
import re
import time

from adapterhub.serving import sources
from serving_client import serve

SAMPLE = re.compile(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$")


def parse(text: str) -> dict[tuple[str, str], float]:
    """``{(name, labels): value}`` of every sample line of a Prometheus text body."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, line
        name, labels, value = match.groups()
        out[(name, labels or "")] = float(value)
    return out


async def _complete(client, model, *, n=1, tokens=6, stream=False):
    body = {"model": model, "prompt": "the movie was", "max_tokens": tokens, "temperature": 0, "n": n}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    answer = await client.post("/v1/completions", json=body)
    assert answer.status_code == 200, answer.text
    if not stream:
        return answer.json()["usage"], len(answer.json()["choices"])
    chunks = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
    finished = [c for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]
    return chunks[-1]["usage"], len(finished)


def test_generation_metrics_count_the_requests_made(tiny_llama_loras):
    directory, dirs = tiny_llama_loras

    async def body(client, engine):
        base = engine.model_id
        made = [
            await _complete(client, base, n=2),
            await _complete(client, "a"),
            await _complete(client, "a", tokens=4),  # a resident: a hit
            await _complete(client, "b", stream=True),  # loads b, evicting a (max_loaded 1)
            await _complete(client, "a"),  # loads a again, evicting b
        ]
        missing = await client.post("/v1/completions", json={"model": "nope", "prompt": "the"})
        assert missing.status_code == 404  # counts nothing
        text = (await client.get("/metrics")).text
        return base, made, text

    base, made, text = serve(directory, dirs, body, max_loaded=1)
    m = parse(text)
    prompt = sum(u["prompt_tokens"] for u, _ in made)
    tokens = sum(u["completion_tokens"] for u, _ in made)
    sequences = sum(s for _, s in made)
    assert sequences == 6 and tokens > sequences  # every sequence made more than one token
    assert m[("adapterhub_generation_prompt_tokens_total", "")] == prompt
    assert m[("adapterhub_generation_tokens_total", "")] == tokens
    requests = {k[1]: v for k, v in m.items() if k[0] == "adapterhub_generation_requests_total"}
    assert requests == {f'model="{base}"': 1, 'model="a"': 3, 'model="b"': 1}
    per_model = {k[1]: v for k, v in m.items() if k[0] == "adapterhub_generation_model_tokens_total"}
    assert per_model == {
        f'model="{base}"': made[0][0]["completion_tokens"],
        'model="a"': sum(made[i][0]["completion_tokens"] for i in (1, 2, 4)),
        'model="b"': made[3][0]["completion_tokens"],
    }
    prompts = {k[1]: v for k, v in m.items() if k[0] == "adapterhub_generation_model_prompt_tokens_total"}
    assert prompts['model="b"'] == made[3][0]["prompt_tokens"] and sum(prompts.values()) == prompt
    # one time-to-first-token per sequence, one inter-token latency per later token
    assert m[("adapterhub_generation_ttft_seconds_count", "")] == sequences
    assert m[("adapterhub_generation_ttft_seconds_bucket", 'le="+Inf"')] == sequences
    assert m[("adapterhub_generation_itl_seconds_count", "")] == tokens - sequences
    assert 0 < m[("adapterhub_generation_ttft_seconds_sum", "")] < 60
    finished = {k[1]: v for k, v in m.items() if k[0] == "adapterhub_generation_finished_total"}
    assert sum(finished.values()) == sequences and set(finished) <= {'reason="length"', 'reason="stop"'}
    assert m[("adapterhub_generation_running", "")] == 0 and m[("adapterhub_generation_waiting", "")] == 0
    cache = {
        (k[0].removeprefix("adapterhub_adapter_cache_").removesuffix("_total"), k[1]): v
        for k, v in m.items()
        if k[0].startswith("adapterhub_adapter_cache_")
    }
    assert cache == {
        ("hits", 'adapter="a"'): 1,
        ("misses", 'adapter="a"'): 2,
        ("misses", 'adapter="b"'): 1,
        ("evictions", 'adapter="a"'): 1,
        ("evictions", 'adapter="b"'): 1,
    }
    assert m[("adapterhub_adapter_evictions_total", "")] == 2


def test_running_gauge_is_live_and_a_left_stream_counts_as_cancelled(tiny_llama_loras):
    directory, _ = tiny_llama_loras

    async def body(client, engine):
        ids = engine.encode_prompts(["the movie was"], max_new_tokens=30)
        run = await engine.open_generation(ids, max_new_tokens=30)
        events = run.events()
        await events.__anext__()  # the first token is here: the sequence runs
        during = parse((await client.get("/metrics")).text)
        await events.aclose()  # the client went away
        after = parse((await client.get("/metrics")).text)
        return during, after

    during, after = serve(directory, {}, body)
    assert during[("adapterhub_generation_running", "")] == 1
    assert during[("adapterhub_generation_reserved_tokens", "")] > 0
    assert during[("adapterhub_generation_ttft_seconds_count", "")] == 1
    assert after[("adapterhub_generation_running", "")] == 0
    assert after[("adapterhub_generation_reserved_tokens", "")] == 0
    assert after[("adapterhub_generation_finished_total", 'reason="cancelled"')] == 1
    assert after[("adapterhub_generation_tokens_total", "")] >= 1


def test_time_to_first_token_counts_the_adapters_load(tiny_llama_loras, monkeypatch):
    directory, dirs = tiny_llama_loras
    fetch = sources.fetch

    def slow_fetch(source, model, **kwargs):
        time.sleep(0.4)  # a slow download
        return fetch(source, model, **kwargs)

    monkeypatch.setattr(sources, "fetch", slow_fetch)

    async def body(client, engine):
        usage, _ = await _complete(client, "a", tokens=2)  # a loads first: its first token waits 0.4 s
        first = parse((await client.get("/metrics")).text)
        await _complete(client, "a", tokens=2)  # resident now
        second = parse((await client.get("/metrics")).text)
        return usage, first, second

    usage, first, second = serve(directory, dirs, body)
    assert usage["completion_tokens"] >= 1
    assert first[("adapterhub_generation_ttft_seconds_count", "")] == 1
    assert first[("adapterhub_generation_ttft_seconds_sum", "")] >= 0.4
    assert first[("adapterhub_generation_ttft_seconds_bucket", 'le="0.25"')] == 0
    second_ttft = (
        second[("adapterhub_generation_ttft_seconds_sum", "")]
        - first[("adapterhub_generation_ttft_seconds_sum", "")]
    )
    assert second[("adapterhub_generation_ttft_seconds_count", "")] == 2 and second_ttft < 0.4
    assert second[("adapterhub_adapter_cache_misses_total", 'adapter="a"')] == 1
    assert second[("adapterhub_adapter_cache_hits_total", 'adapter="a"')] == 1

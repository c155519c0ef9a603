"""``serve-model --ray`` serves the OpenAI routes and ``/metrics``: a tiny random Llama with a chat tokenizer and
two LoRA adapters on a local Ray instance with 2 replicas.

Greedy chat and text completions (base model and each adapter, through the ``openai`` client), plain and
streamed, equal the single-process server's answers on the same model (chunk for chunk), each adapter's requests
stay on the replica that loaded it, ``/v1/models`` lists the same models, errors keep OpenAI's shape (404 unknown
model, 400 bad body), and ``/metrics`` holds every replica's metrics labelled ``replica``, whose generation
counters add up to the tokens served. A long stream's first event arrives while the replica still generates,
and the client going away cancels the replica's sequence. vLLM's load/unload (token-protected) reach every
replica with the single-process weights hash, a replica that refuses makes the call fail naming it, the
others rolled back, and a replica that Ray starts later applies the run-time changes. The project's ``POST/DELETE /v1/adapters`` and
``POST/DELETE /v1/compositions`` reach every replica too, answering (status, body) as the single-process server,
and requests naming what they added (or a ``--composition`` given at start) answer as it does.
"""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import transformers

import adapterhub
from adapterhub.serving.background import BackgroundServer
from adapterhub.serving.engine import EngineConfig, ServingEngine
from serving_client import ray_test_init_options
from tiny_chat import save_chat_llama
from tiny_models import perturb

pytestmark = pytest.mark.slow

WORDS = "the a movie film plot is was and but not very good bad great fun dull it i liked who what system user assistant"
MESSAGES = [
    {"role": "system", "content": "i liked the movie"},
    {"role": "user", "content": "what is the plot"},
]
CONFIG = EngineConfig(max_loaded=2, max_num_seqs=8, max_batch_tokens=256)
CONTEXT = 1024  # room for a stream long enough to leave while it runs
TOKEN = "ray-secret"
COMPOSITIONS = {"both": "Stack(poems, jokes)"}  # served from the start (--composition)


@pytest.fixture(scope="module")
def chat_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    directory = tmp_path_factory.mktemp("ray-chat-llama")
    save_chat_llama(directory, WORDS.split(), context=CONTEXT)
    model = adapterhub.init(transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval())
    adapters = {}
    for seed, name in enumerate(("poems", "jokes")):
        model.add_adapter(name, config="lora")
        perturb(model._adapterhub.adapters[name], std=0.4, seed=3 + seed)
        adapters[name] = str(model.save_adapter(directory / "adapters" / name, name))
    return directory, adapters


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any] | bytes) -> tuple[int, dict[str, Any], Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as response:
        return str(response.read().decode())


@pytest.fixture(scope="module")
def single(chat_llama: tuple[Path, dict[str, str]]) -> Any:
    directory, adapters = chat_llama
    engine = ServingEngine.from_pretrained(
        str(directory), adapters=adapters, config=CONFIG, compositions=COMPOSITIONS
    )
    with BackgroundServer(engine, token=TOKEN) as running:
        yield running


@pytest.fixture(scope="module")
def served(chat_llama: tuple[Path, dict[str, str]]) -> Any:
    pytest.importorskip(
        "ray", reason="Ray is not installed: pip install -e '.[ray]' (constraints.txt pins it)"
    )
    import ray
    from ray import serve

    from adapterhub.serving import ray_serve

    directory, adapters = chat_llama
    port = _free_port()
    app = ray_serve.build_app(
        str(directory), adapters, CONFIG, replicas=2, replica_cpus=0.5, token=TOKEN, compositions=COMPOSITIONS
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **ray_test_init_options())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app, name=ray_serve.APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _strip(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


def test_ray_openai_answers_equal_the_single_process_server(served, single):
    from adapterhub.serving.ray_serve import REPLICA_ADAPTERS_HEADER, REPLICA_HEADER

    base = single.engine.model_id
    ray_client, one_client = _client(served), _client(single.url)
    replicas = {}
    for model in ("poems", "jokes", base):
        for _ in range(2):  # the second request for an adapter goes to the replica that loaded it
            raw = ray_client.chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES, max_tokens=8, temperature=0
            )
            got, expected = (
                raw.parse(),
                one_client.chat.completions.create(
                    model=model, messages=MESSAGES, max_tokens=8, temperature=0
                ),
            )
            assert _strip(got.model_dump()) == _strip(expected.model_dump()), model
            if model != base:
                assert model in raw.headers[REPLICA_ADAPTERS_HEADER].split(",")
                assert replicas.setdefault(model, raw.headers[REPLICA_HEADER]) == raw.headers[REPLICA_HEADER]
        time.sleep(2.0)  # Ray's router learns which replica holds the adapter
    assert replicas["poems"] != replicas["jokes"]  # the second adapter went to the replica holding none
    poems = ray_client.chat.completions.create(model="poems", messages=MESSAGES, max_tokens=8, temperature=0)
    jokes = ray_client.chat.completions.create(model="jokes", messages=MESSAGES, max_tokens=8, temperature=0)
    assert poems.choices[0].message.content != jokes.choices[0].message.content

    body = {"model": "jokes", "prompt": ["the movie was", "i liked"], "max_tokens": 5, "temperature": 0}
    status, got_c, _ = _post(f"{served}/v1/completions", body)
    status_one, expected_c, _ = _post(f"{single.url}/v1/completions", body)
    assert status == status_one == 200 and _strip(got_c) == _strip(expected_c)
    listed = json.loads(_get(f"{served}/v1/models"))
    assert [m["id"] for m in listed["data"]] == [m.id for m in one_client.models.list().data]


def test_ray_openai_errors(served):
    status, body, _ = _post(f"{served}/v1/completions", {"model": "poem", "prompt": "the"})
    assert (
        status == 404 and body["error"]["code"] == "model_not_found" and "'poems'" in body["error"]["message"]
    )
    status, body, _ = _post(f"{served}/v1/chat/completions", {"model": "poems", "messages": []})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body, _ = _post(f"{served}/v1/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.NotFoundError, match="'poems'"):  # a streamed request's error is not streamed
        _client(served).chat.completions.create(model="poem", messages=MESSAGES, max_tokens=4, stream=True)


def test_ray_metrics_label_every_replica(served):
    from adapterhub.serving.ray_serve import METRICS_PUSH_S

    client = _client(served)
    tokens = sum(
        client.completions.create(
            model=m, prompt="the movie", max_tokens=4, temperature=0
        ).usage.completion_tokens
        for m in ("poems", "jokes")
    )
    pattern = re.compile(r'^adapterhub_generation_tokens_total\{replica="([^"]+)"\} (\S+)$', re.M)
    deadline = time.time() + 10 * METRICS_PUSH_S
    while True:
        text = _get(f"{served}/metrics")
        found = {replica: float(value) for replica, value in pattern.findall(text)}
        if (len(found) == 2 and sum(found.values()) >= tokens) or time.time() > deadline:
            break
        time.sleep(METRICS_PUSH_S)
    assert len(found) == 2, text  # both replicas, each labelled
    assert sum(found.values()) >= tokens  # earlier tests' tokens too
    assert text.count("# TYPE adapterhub_generation_tokens_total counter") == 1  # one family, two samples


def _chunks(stream: Any) -> list[dict[str, Any]]:
    return [_strip(chunk.model_dump()) for chunk in stream]


def test_ray_streams_equal_the_single_process_streams(served, single):
    ray_client, one_client = _client(served), _client(single.url)
    for model in ("poems", single.engine.model_id):
        kw = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "stream": True,
              "stream_options": {"include_usage": True}}  # fmt: skip
        got = _chunks(ray_client.chat.completions.create(**kw))
        assert got == _chunks(one_client.chat.completions.create(**kw)), model
        assert (
            got[-1]["usage"]["completion_tokens"] == 8 and len(got) == 1 + 8 + 1 + 1
        )  # role, tokens, end, usage
    kw = {"model": "jokes", "prompt": "the movie was", "max_tokens": 5, "temperature": 0, "stream": True}
    assert _chunks(ray_client.completions.create(**kw)) == _chunks(one_client.completions.create(**kw))


def _finished(url: str) -> dict[str, float]:
    """Sequences ended per reason, summed over the replicas (``/metrics``)."""
    pattern = re.compile(
        r'^adapterhub_generation_finished_total\{replica="[^"]+",reason="(\w+)"\} (\S+)$', re.M
    )
    out: dict[str, float] = {}
    for reason, value in pattern.findall(_get(f"{url}/metrics")):
        out[reason] = out.get(reason, 0.0) + float(value)
    return out


def test_ray_stream_arrives_while_generating_and_leaving_cancels_it(served):
    from adapterhub.serving.ray_serve import METRICS_PUSH_S

    time.sleep(2 * METRICS_PUSH_S)  # the earlier tests' counts have reached the board
    before = _finished(served)
    body = {"model": "poems", "prompt": "the movie", "max_tokens": 900, "temperature": 0, "stream": True}
    started = time.perf_counter()
    with httpx.stream("POST", f"{served}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/event-stream"
        )
        first = json.loads(next(line for line in response.iter_lines() if line)[len("data: ") :])
        first_after = time.perf_counter() - started
    assert first["choices"][0]["finish_reason"] is None  # a token, not the end
    # Had the replica buffered the answer, the first event would come after all 900 tokens ("length"); the
    # client left after the first, so the replica's sequence must end "cancelled" instead.
    deadline = time.time() + 30
    while time.time() < deadline:
        after = _finished(served)
        if after.get("cancelled", 0) > before.get("cancelled", 0):
            break
        time.sleep(METRICS_PUSH_S)
    assert after.get("cancelled", 0) == before.get("cancelled", 0) + 1, (before, after, first_after)
    assert after.get("length", 0) == before.get("length", 0)


def _load(url: str, body: dict[str, Any], path: str = "load_lora_adapter", token: str | None = TOKEN) -> Any:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.post(f"{url}/v1/{path}", json=body, headers=headers, timeout=60)


def _replica_adapters() -> list[dict[str, dict[str, Any]]]:
    """Each replica's adapters (name -> its entry), asked of every replica by the driver."""
    from ray import serve

    from adapterhub.serving.ray_serve import APP_NAME

    handle = serve.get_deployment_handle("EngineReplica", APP_NAME)
    answers = handle.broadcast("adapters").results(timeout_s=60)
    return [{a["name"]: a for a in answer["result"]["adapters"]} for answer in answers]


def test_ray_runtime_load_and_unload_reach_every_replica(served, single, chat_llama):
    _, adapters = chat_llama
    load = {"lora_name": "extra", "lora_path": adapters["jokes"]}
    no_token = _load(served, load, token=None)
    assert no_token.status_code == 401 and no_token.json()["error"]["type"] == "authentication_error"
    assert _load(served, load, token="wrong").status_code == 401
    answer, expected = _load(served, load), _load(single.url, load)
    assert answer.status_code == expected.status_code == 200 and answer.text == expected.text
    one_hash = next(m for m in _client(single.url).models.list().data if m.id == "extra").hash
    assert one_hash is not None
    held = _replica_adapters()
    assert len(held) == 2 and all(r["extra"]["loaded"] and r["extra"]["hash"] == one_hash for r in held)
    for _ in range(4):  # whichever replica answers lists it, with the same hash
        listed = {m["id"]: m for m in json.loads(_get(f"{served}/v1/models"))["data"]}
        assert listed["extra"]["hash"] == one_hash
    kw = {"model": "extra", "messages": MESSAGES, "max_tokens": 6, "temperature": 0}
    got = _client(served).chat.completions.create(**kw)
    assert _strip(got.model_dump()) == _strip(_client(single.url).chat.completions.create(**kw).model_dump())
    bad = {"lora_name": "broken", "lora_path": "/no/such/adapter"}
    refused, expected = _load(served, bad), _load(single.url, bad)
    assert refused.status_code == expected.status_code == 400 and refused.json() == expected.json()
    unload = {"lora_name": "extra"}
    assert (
        _load(served, unload, "unload_lora_adapter").text
        == _load(single.url, unload, "unload_lora_adapter").text
    )
    assert all("extra" not in r for r in _replica_adapters())
    with pytest.raises(openai.NotFoundError):
        _client(served).chat.completions.create(**kw)
    assert _load(served, unload, "unload_lora_adapter").status_code == 404


def _admin(
    url: str, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = TOKEN
) -> Any:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    answer = httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=60)
    return answer.status_code, answer.json()


def test_ray_adapter_and_composition_routes_equal_the_single_process_server(served, single, chat_llama):
    _, adapters = chat_llama
    add = {"name": "more", "source": adapters["jokes"], "load": True}
    duo = {"name": "duo", "setup": "Stack(poems, more)"}
    steps = [
        ("POST", "/v1/adapters", add, None),  # no token: 401 {"detail"}
        ("POST", "/v1/compositions", duo, None),  # no token: 401 in OpenAI's shape
        ("POST", "/v1/adapters", add, TOKEN),
        ("POST", "/v1/compositions", duo, TOKEN),
        ("POST", "/v1/compositions", {"name": "fused", "setup": "Fuse(poems, more)"}, TOKEN),  # 400
        (
            "POST",
            "/v1/adapters",
            {"name": "broken", "source": "/no/such/adapter", "load": True},
            TOKEN,
        ),  # 502
    ]
    statuses = []
    for method, path, body, token in steps:
        got, expected = (
            _admin(served, method, path, body, token),
            _admin(single.url, method, path, body, token),
        )
        assert got == expected, (method, path, token)
        statuses.append(got[0])
    assert statuses == [401, 401, 200, 200, 400, 502]
    held = _replica_adapters()
    assert len(held) == 2 and all(r["more"]["loaded"] for r in held)
    listed = json.loads(_get(f"{served}/v1/adapters"))["compositions"]
    assert listed == json.loads(_get(f"{single.url}/v1/adapters"))["compositions"]
    for model in ("more", "duo", "both"):
        for _ in range(2):  # whichever replica answers
            kw = {"model": model, "messages": MESSAGES, "max_tokens": 6, "temperature": 0}
            got = _client(served).chat.completions.create(**kw)
            assert _strip(got.model_dump()) == _strip(
                _client(single.url).chat.completions.create(**kw).model_dump()
            )
    for method, path in [
        ("DELETE", "/v1/compositions/duo"),
        ("DELETE", "/v1/adapters/more"),
    ] * 2:  # 200, then unknown
        got, expected = _admin(served, method, path), _admin(single.url, method, path)
        assert got == expected, (method, path)
        statuses.append(got[0])
    assert statuses[-4:] == [200, 200, 400, 404]
    for model in ("duo", "more"):  # deleted: 404 as the single-process server answers it
        body = {"model": model, "prompt": "the movie", "max_tokens": 2}
        (status, got, _), (status_one, expected, _) = (
            _post(f"{url}/v1/completions", body) for url in (served, single.url)
        )
        assert status == status_one == 404 and got == expected, model
    assert all("more" not in r for r in _replica_adapters())


def test_ray_load_refused_by_one_replica_fails_and_rolls_back(served, chat_llama):
    from ray import serve

    from adapterhub.serving.ray_serve import APP_NAME

    _, adapters = chat_llama
    body = {"lora_name": "clash", "lora_path": adapters["poems"]}
    handle = serve.get_deployment_handle("EngineReplica", APP_NAME)
    first = handle.change.remote("POST", "/v1/load_lora_adapter", json.dumps(body).encode()).result(
        timeout_s=60
    )
    assert first.status == 200  # one replica serves "clash" already: it will refuse the gateway's load
    try:
        answer = _load(served, body)
        message = answer.json()["error"]["message"]
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "lora_name"
        assert f"1 of 2 replicas failed; replica {first.replica} answered 400" in message
        assert "has already been loaded" in message and "Rolled back" in message
        assert sorted("clash" in r for r in _replica_adapters()) == [
            False,
            True,
        ]  # only the one loaded before
    finally:
        handle.broadcast("restore", "adapter", "clash", {first.replica: None}).results(
            timeout_s=60
        )  # not before
    assert all("clash" not in r for r in _replica_adapters())


def test_ray_replica_started_later_applies_the_runtime_changes(served, chat_llama):
    """Last in the module: it replaces a replica (Ray starts another in its place)."""
    import ray
    from ray import serve

    from adapterhub.serving.ray_serve import APP_NAME

    _, adapters = chat_llama
    assert _load(served, {"lora_name": "late", "lora_path": adapters["poems"]}).status_code == 200
    duo = {"name": "duo", "setup": "Stack(late, poems)"}  # replayed after "late", which it needs
    assert _load(served, duo, "compositions").status_code == 200
    assert _load(served, {"lora_name": "jokes"}, "unload_lora_adapter").status_code == 200
    handle = serve.get_deployment_handle("EngineReplica", APP_NAME)
    before = {s["replica"] for s in handle.broadcast("state").results(timeout_s=60)}
    victim = sorted(before)[0]
    ray.kill(ray.get_actor(f"SERVE_REPLICA::{APP_NAME}#EngineReplica#{victim}", namespace="serve"))
    # Ray starts the new replica, which loads the model and replays the changes: minutes on two busy cores.
    deadline, states = time.time() + 360, []
    while time.time() < deadline:
        states = handle.broadcast("state").results(timeout_s=60, return_exceptions=True)
        ids = {s["replica"] for s in states if isinstance(s, dict)}
        if len(ids) == 2 and victim not in ids:
            break
        time.sleep(1.0)
    fresh = [s for s in states if isinstance(s, dict) and s["replica"] not in before]
    assert len(fresh) == 1, f"no replacement replica answered within 360 s: {states}"
    assert fresh[0]["sources"] == {"poems": adapters["poems"], "late": adapters["poems"]}
    assert fresh[0]["compositions"] == {"both": "Stack('poems', 'jokes')", "duo": "Stack('late', 'poems')"}
    got = _client(served).chat.completions.create(
        model="late", messages=MESSAGES, max_tokens=4, temperature=0
    )
    assert got.choices[0].finish_reason in ("stop", "length")

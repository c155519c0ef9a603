"""``serve-model --ray``: the engine as a Ray Serve application on a local Ray instance with 2 replicas.

Requests for different adapters get the offline model's answers (logits within 1e-5), and Ray's model
multiplexing is in effect: every request for an adapter is answered by the replica that loaded it, the second
adapter goes to the replica that held none, and each replica holds only the adapters routed to it.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from serving_client import ray_test_init_options

pytestmark = pytest.mark.slow

TOL = 1e-5
TEXTS = [
    "the movie was good",
    "a bad film",
    "it was not very fun and the plot was dull but i liked it",
    "fun",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], Any]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


@pytest.fixture(scope="module")
def served(tiny_bert_dir, adapter_dirs):
    pytest.importorskip(
        "ray", reason="Ray is not installed: pip install -e '.[ray]' (constraints.txt pins it)"
    )
    import ray
    from ray import serve

    from adapterhub.serving import ray_serve
    from adapterhub.serving.engine import EngineConfig

    port = _free_port()
    names = ("cls3", "cls2", "lang", "task")
    app = ray_serve.build_app(
        str(tiny_bert_dir),
        {name: str(adapter_dirs[name]) for name in names},
        EngineConfig(max_loaded=2, max_batch_rows=16, max_wait_ms=20),
        replicas=2,
        replica_cpus=0.5,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **ray_test_init_options())
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app, name=ray_serve.APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _reference(model: Any, tokenizer: Any, setup: Any, text: str) -> torch.Tensor:
    with torch.no_grad(), model.adapter_setup(setup):
        return model(**tokenizer(text, return_tensors="pt")).logits[0]


def _check(answer: dict[str, Any], model: Any, tokenizer: Any, setup: Any, texts: list[str]) -> None:
    assert len(answer["predictions"]) == len(texts)
    for prediction, text in zip(answer["predictions"], texts, strict=True):
        expected = _reference(model, tokenizer, setup, text)
        served = torch.tensor(prediction["logits"])
        assert torch.allclose(served, expected, atol=TOL), (setup, text, served, expected)
        scores = torch.softmax(expected, -1)
        assert prediction["label"] == max(prediction["scores"], key=prediction["scores"].get)
        assert torch.allclose(torch.tensor(list(prediction["scores"].values())), scores, atol=TOL)


def test_ray_replicas_answer_like_offline_and_route_by_adapter(served, offline_model, tokenizer):
    from adapterhub import Stack
    from adapterhub.serving.ray_serve import REPLICA_ADAPTERS_HEADER, REPLICA_HEADER

    url = f"{served}/v1/predict"
    # First use of each adapter: cls3 lands on some replica; once Ray knows it (pushed within ~0.1 s), cls2 goes to
    # the replica holding the fewest adapters, i.e. the other one.
    first = {}
    for name in ("cls3", "cls2"):
        status, body, headers = _post(url, {"adapter": name, "inputs": TEXTS[:1], "logits": True})
        assert status == 200, body
        first[name] = headers[REPLICA_HEADER]
        time.sleep(3.0)
    assert first["cls3"] != first["cls2"]

    # Mixed traffic, 16 concurrent requests: each adapter's requests all go to the replica that holds it.
    jobs = [(name, [text]) for name in ("cls3", "cls2") for text in TEXTS] * 2
    with ThreadPoolExecutor(16) as pool:
        answers = list(
            pool.map(lambda job: _post(url, {"adapter": job[0], "inputs": job[1], "logits": True}), jobs)
        )
    for (name, texts), (status, body, headers) in zip(jobs, answers, strict=True):
        assert status == 200, body
        assert body["adapter"] == name
        assert headers[REPLICA_HEADER] == first[name], (name, headers[REPLICA_HEADER], first)
        assert headers[REPLICA_ADAPTERS_HEADER].split(",") == [name]  # that replica loaded nothing else
        _check(body, offline_model, tokenizer, name, texts)

    # A setup is one multiplexed id too; its answer equals the offline Stack.
    status, body, headers = _post(url, {"setup": "Stack(lang, task)", "inputs": TEXTS[:2], "logits": True})
    assert status == 200, body
    assert set(headers[REPLICA_ADAPTERS_HEADER].split(",")) >= {"lang", "task"}
    _check(body, offline_model, tokenizer, Stack("lang", "task"), TEXTS[:2])


def test_ray_errors_keep_the_single_process_statuses(served):
    status, body, _ = _post(f"{served}/v1/predict", {"adapter": "cls33", "inputs": ["good"]})
    assert status == 404 and "cls3" in body["detail"]
    status, body, _ = _post(f"{served}/v1/predict", {"adapter": "cls3", "inputs": []})
    assert status == 422
    status, body, _ = _post(f"{served}/v1/predict", {"setup": "Stack(lang,", "inputs": ["good"]})
    assert status == 422, body
    status, body, _ = _post(f"{served}/v1/adapters", {"name": "x", "source": "/no/such/dir", "load": True})
    assert status == 502 and "/no/such/dir" in body["detail"]  # every replica refused alike: their answer
    with urllib.request.urlopen(f"{served}/health", timeout=30) as response:
        assert json.loads(response.read())["replicas"] == 2

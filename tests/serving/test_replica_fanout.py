"""``replica_fanout.apply_everywhere`` over fake replicas: all succeed (their answer), all fail alike (that answer
unchanged), one fails (the call fails naming it and why, in the route's error shape; exactly the replicas that
applied it are restored to their previous state), a replica that raised, and a rollback that fails too.
``change_target`` of every change route. ``apply_change`` on a real engine (what a replica restores or replays):
serve an adapter or a composition, replace it, stop serving it. Two in-process replicas (real engines, no Ray)
changed through ``apply_everywhere``: every answer equals the single-process server's, and a change one of them
refuses leaves both as they were."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from adapterhub.serving.app import create_app
from adapterhub.serving.asgi_calls import call_app
from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.serving.replica_fanout import (
    ReplicaAnswer,
    answer_change,
    apply_change,
    apply_everywhere,
    change_target,
)

OK = b"Success: LoRA adapter 'x' added successfully."
BODY = json.dumps({"lora_name": "x", "lora_path": "/adapters/x"}).encode()


def _refused(replica: str, previous: str | None = None) -> ReplicaAnswer:
    error = {
        "message": "bad source",
        "type": "invalid_request_error",
        "param": "lora_path",
        "code": "invalid_value",
    }
    return ReplicaAnswer(replica, 400, "application/json", json.dumps({"error": error}).encode(), previous)


class Replicas:
    """Answers per replica for ``lora``; records every ``restore`` broadcast."""

    def __init__(self, answers: list[Any], restore_fails: bool = False) -> None:
        self.answers = answers
        self.restore_fails = restore_fails
        self.restored: list[tuple[str, str, dict[str, str | None]]] = []

    async def __call__(self, method: str, *args: Any) -> list[Any]:
        if method == "change":
            return self.answers
        kind, name, previous = args
        self.restored.append((kind, name, dict(previous)))
        return [RuntimeError("replica gone")] if self.restore_fails else [None] * len(self.answers)


def _ok(replica: str, previous: str | None = None) -> ReplicaAnswer:
    return ReplicaAnswer(replica, 200, "text/plain; charset=utf-8", OK, previous)


def _run(
    replicas: Replicas, method: str = "POST", path: str = "/v1/load_lora_adapter", body: bytes = BODY
) -> tuple[int, Any]:
    response = asyncio.run(apply_everywhere(replicas, method, path, body))
    body = bytes(response.body)
    return response.status_code, body if response.status_code == 200 else json.loads(body)


def test_every_replica_applied_it():
    replicas = Replicas([_ok("r1"), _ok("r2")])
    assert _run(replicas) == (200, OK) and replicas.restored == []


def test_the_same_failure_everywhere_is_the_single_process_answer():
    replicas = Replicas([_refused("r1"), _refused("r2")])
    status, body = _run(replicas)
    assert status == 400 and body["error"]["message"] == "bad source" and replicas.restored == []


def test_one_failing_replica_fails_the_call_and_the_others_roll_back():
    replicas = Replicas([_ok("r1"), _refused("r2", previous="/old"), _ok("r3", previous="/older")])
    status, body = _run(replicas)
    error = body["error"]
    assert status == 400 and error["param"] == "lora_path" and error["code"] == "invalid_value"
    assert "1 of 3 replicas failed; replica r2 answered 400: bad source" in error["message"]
    assert "Rolled back on the replica(s) that had applied it (r1, r3)" in error["message"]
    assert replicas.restored == [("adapter", "x", {"r1": None, "r3": "/older"})]  # r2 failed: left as it was


def test_a_replica_that_raised_and_a_failed_rollback_are_named():
    replicas = Replicas([_ok("r1"), ConnectionError("actor died")], restore_fails=True)
    status, body = _run(replicas)
    message = body["error"]["message"]
    assert status == 500 and "replica raised ConnectionError: actor died" in message
    assert (
        "Rolling back the replicas that had applied it (r1) failed: replica gone; remove the adapter 'x'"
        in message
    )


def test_no_replica_running():
    status, body = _run(Replicas([]))
    assert status == 503 and "No engine replica" in body["error"]["message"]


def test_a_project_route_fails_in_its_own_shape_and_compositions_roll_back():
    detail = ReplicaAnswer("r2", 404, "application/json", b'{"detail": "No adapter named \'x\'."}', None)
    replicas = Replicas([_ok("r1", previous="/x"), detail])
    status, body = _run(replicas, "DELETE", "/v1/adapters/x", b"")
    assert status == 404 and set(body) == {"detail"}
    assert body["detail"].startswith("1 of 2 replicas failed; replica r2 answered 404: No adapter named 'x'.")
    assert replicas.restored == [("adapter", "x", {"r1": "/x"})]
    replicas = Replicas([_ok("r1", previous="Stack('a', 'b')"), _refused("r2")])
    status, body = _run(replicas, "DELETE", "/v1/compositions/both", b"")
    assert status == 400 and body["error"]["message"].startswith("1 of 2 replicas failed; replica r2")
    assert replicas.restored == [("composition", "both", {"r1": "Stack('a', 'b')"})]


@pytest.mark.parametrize(
    ("method", "path", "body", "target"),
    [
        ("POST", "/v1/load_lora_adapter", BODY, ("adapter", "x")),
        ("POST", "/v1/unload_lora_adapter", b'{"lora_name": "x"}', ("adapter", "x")),
        ("POST", "/v1/adapters", b'{"name": "y", "source": "/y"}', ("adapter", "y")),
        ("DELETE", "/v1/adapters/y", b"", ("adapter", "y")),
        ("POST", "/v1/compositions/", b'{"name": "both", "setup": "Stack(a, b)"}', ("composition", "both")),
        ("DELETE", "/v1/compositions/both", b"", ("composition", "both")),
        ("POST", "/v1/adapters", b"{not json", None),
        ("POST", "/v1/compositions", b'{"name": 3}', None),
        ("DELETE", "/v1/adapters/", b"", None),
        ("GET", "/v1/adapters", b"", None),
    ],
)
def test_change_target(method, path, body, target):
    assert change_target(method, path, body) == target


def test_apply_change_serves_replaces_and_drops_a_name(tiny_llama_loras):
    directory, adapters = tiny_llama_loras

    async def main():
        engine = ServingEngine.from_pretrained(str(directory), adapters={"a": str(adapters["a"])},
                                               config=EngineConfig(max_loaded=2))  # fmt: skip
        await engine.start()
        try:
            await apply_change(
                engine, "adapter", "new", str(adapters["b"]), load=False
            )  # replayed: on first use
            steps = [(dict(engine.registry.sources), sorted(engine.registry.loaded))]
            await apply_change(
                engine, "adapter", "new", str(adapters["c"]), load=True
            )  # restored: loaded now
            hash_c = engine.registry.hashes["new"]
            steps.append((dict(engine.registry.sources), sorted(engine.registry.loaded)))
            await apply_change(engine, "adapter", "a", None, load=True)
            await apply_change(engine, "adapter", "gone", None, load=True)  # not served: nothing to do
            steps.append((dict(engine.registry.sources), sorted(engine.registry.loaded)))
            return steps, hash_c
        finally:
            await engine.shutdown()

    steps, hash_c = asyncio.run(main())
    assert [{k: str(v) for k, v in sources.items()} for sources, _ in steps] == [
        {"a": str(adapters["a"]), "new": str(adapters["b"])},
        {"a": str(adapters["a"]), "new": str(adapters["c"])},
        {"new": str(adapters["c"])},
    ]
    assert [loaded for _, loaded in steps] == [[], ["new"], ["new"]] and hash_c.startswith("sha256:")


def test_apply_change_serves_replaces_and_drops_a_composition(tiny_llama_loras):
    directory, adapters = tiny_llama_loras
    engine = ServingEngine.from_pretrained(
        str(directory), adapters={n: str(adapters[n]) for n in "ab"}, config=EngineConfig(max_loaded=2)
    )
    steps = []
    for state in ("Stack(a, b)", "Average(b, a)", None, None):  # the last: not served, nothing to do
        asyncio.run(apply_change(engine, "composition", "mix", state, load=True))
        steps.append(dict(engine.compositions.texts))
    average = "Average('b', 'a', weights=None, normalize_weights=True)"
    assert steps == [{"mix": "Stack('a', 'b')"}, {"mix": average}, {}, {}]
    with pytest.raises(ValueError, match="kinds: adapter, composition"):
        asyncio.run(apply_change(engine, "fusion", "mix", None, load=True))


PROMPT = {"prompt": "the movie", "max_tokens": 4, "temperature": 0}


def test_in_process_replicas_answer_as_the_single_process_server(tiny_llama_loras):
    """Two real engines as replicas (the fan-out over ``answer_change``, no Ray) and one single-process server:
    POST/DELETE /v1/adapters and /v1/compositions answer alike (status and body), requests naming what was added
    answer alike, and after a delete they 404 alike. A composition that one replica refuses (it lacks a member)
    fails naming it, and the other replica is rolled back."""
    directory, adapters = tiny_llama_loras
    start = {"a": str(adapters["a"])}

    async def main() -> list[Any]:
        engines = [
            ServingEngine.from_pretrained(str(directory), adapters=start, config=EngineConfig(max_loaded=3))
            for _ in range(3)
        ]
        for engine in engines:
            await engine.start()
        replicas, apps = engines[1:], [create_app(e) for e in engines]
        one_app, replica_apps = apps[0], apps[1:]

        async def broadcast(call: str, *args: Any) -> list[Any]:
            if call == "change":
                return [
                    await answer_change(app, engine, f"r{i}", *args)
                    for i, (app, engine) in enumerate(zip(replica_apps, replicas, strict=True))
                ]
            kind, name, previous = args
            for i, engine in enumerate(replicas):
                if f"r{i}" in previous:
                    await apply_change(engine, kind, name, previous[f"r{i}"], load=True)
            return [None] * len(replicas)

        async def both(method: str, path: str, body: dict[str, Any] | None = None) -> tuple[Any, Any]:
            raw = b"" if body is None else json.dumps(body).encode()
            got = await apply_everywhere(broadcast, method, path, raw)
            status, _, expected = await call_app(one_app, method, path, raw)
            return (got.status_code, json.loads(bytes(got.body))), (status, json.loads(expected))

        async def served(model: str) -> list[tuple[int, Any]]:
            out = []
            for app in apps:
                status, _, body = await call_app(
                    app, "POST", "/v1/completions", json.dumps({"model": model, **PROMPT}).encode()
                )
                answer = json.loads(body)
                out.append((status, answer.get("choices", answer.get("error", {}).get("code"))))
            return out

        checks: list[Any] = []
        try:
            add = {"name": "x", "source": str(adapters["b"]), "load": True}
            checks.append(await both("POST", "/v1/adapters", add))
            checks.append(await both("POST", "/v1/compositions", {"name": "mix", "setup": "Stack(a, x)"}))
            checks.append(await served("x") + await served("mix"))
            checks.append(await both("POST", "/v1/compositions", {"name": "bad", "setup": "Fuse(a, x)"}))
            checks.append(await both("DELETE", "/v1/compositions/mix"))
            checks.append(await both("DELETE", "/v1/compositions/mix"))  # now unknown
            checks.append(await both("DELETE", "/v1/adapters/x"))
            checks.append(await both("DELETE", "/v1/adapters/x"))  # now unknown
            checks.append(await served("x") + await served("mix"))
            await replicas[1].add_adapter(
                "c", str(adapters["c"])
            )  # only r1 has c: r1 refuses a composition of it
            got = await apply_everywhere(broadcast, "POST", "/v1/compositions",
                                         json.dumps({"name": "ac", "setup": "Stack(a, c)"}).encode())  # fmt: skip
            checks.append(
                (got.status_code, json.loads(bytes(got.body)), [dict(e.compositions.texts) for e in replicas])
            )
        finally:
            for engine in engines:
                await engine.shutdown()
        return checks

    added, composed, answers, fused, deleted, again, removed, gone, after, partial = asyncio.run(main())
    for got, expected in (added, composed, fused, deleted, again, removed, gone):
        assert got == expected
    assert added[0][0] == composed[0][0] == deleted[0][0] == removed[0][0] == 200
    assert composed[0][1] == {"name": "mix", "setup": "Stack('a', 'x')", "adapters": ["a", "x"]}
    assert fused[0][0] == 400 and again[0][0] == 400 and gone[0] == (404, {"detail": gone[0][1]["detail"]})
    assert answers[0] == answers[1] == answers[2] and answers[3] == answers[4] == answers[5]
    assert answers[0][0] == answers[3][0] == 200 and answers[0][1] != answers[3][1]
    assert after == [(404, "model_not_found")] * 6
    status, body, compositions = partial
    message = body["error"]["message"]
    assert status == 400 and message.startswith(
        "1 of 2 replicas failed; replica r0 answered 400: Composition"
    )
    assert "Rolled back on the replica(s) that had applied it (r1); nothing changed." in message
    assert compositions == [{}, {}]

"""``replica_fanout.apply_everywhere`` over fake replicas: all succeed (their answer), all fail alike (that answer
unchanged), one fails (the call fails naming it and why; exactly the replicas that applied it are restored to
their previous state), a replica that raised, and a rollback that fails too. ``apply_change`` on a real engine
(what a replica restores or replays): serve a name from a source, replace it, stop serving it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from adapterhub.serving.engine import EngineConfig, ServingEngine
from adapterhub.serving.replica_fanout import ReplicaAnswer, apply_change, apply_everywhere

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
        self.restored: list[tuple[str, dict[str, str | None]]] = []

    async def __call__(self, method: str, *args: Any) -> list[Any]:
        if method == "lora":
            return self.answers
        name, previous = args
        self.restored.append((name, dict(previous)))
        return [RuntimeError("replica gone")] if self.restore_fails else [None] * len(self.answers)


def _ok(replica: str, previous: str | None = None) -> ReplicaAnswer:
    return ReplicaAnswer(replica, 200, "text/plain; charset=utf-8", OK, previous)


def _run(replicas: Replicas) -> tuple[int, Any]:
    response = asyncio.run(apply_everywhere(replicas, "/v1/load_lora_adapter", BODY))
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
    assert replicas.restored == [("x", {"r1": None, "r3": "/older"})]  # r2 failed: left as it was


def test_a_replica_that_raised_and_a_failed_rollback_are_named():
    replicas = Replicas([_ok("r1"), ConnectionError("actor died")], restore_fails=True)
    status, body = _run(replicas)
    message = body["error"]["message"]
    assert status == 500 and "replica raised ConnectionError: actor died" in message
    assert "Rolling back the replicas that had applied it (r1) failed: replica gone; unload 'x'" in message


def test_no_replica_running():
    status, body = _run(Replicas([]))
    assert status == 503 and "No engine replica" in body["error"]["message"]


def test_apply_change_serves_replaces_and_drops_a_name(tiny_llama_loras):
    directory, adapters = tiny_llama_loras

    async def main():
        engine = ServingEngine.from_pretrained(str(directory), adapters={"a": str(adapters["a"])},
                                               config=EngineConfig(max_loaded=2))  # fmt: skip
        await engine.start()
        try:
            await apply_change(engine, "new", str(adapters["b"]), load=False)  # replayed: on first use
            steps = [(dict(engine.registry.sources), sorted(engine.registry.loaded))]
            await apply_change(engine, "new", str(adapters["c"]), load=True)  # restored: loaded now
            hash_c = engine.registry.hashes["new"]
            steps.append((dict(engine.registry.sources), sorted(engine.registry.loaded)))
            await apply_change(engine, "a", None, load=True)
            await apply_change(engine, "gone", None, load=True)  # not served: nothing to do
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

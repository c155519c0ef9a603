"""Run-time changes under ``serve-model --ray``, applied to every engine replica, all or none: vLLM's
``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter``, the project's ``POST /v1/adapters`` /
``DELETE /v1/adapters/NAME`` and ``POST /v1/compositions`` / ``DELETE /v1/compositions/NAME``.

Each change touches one *target* (``change_target``): ``("adapter", NAME)`` (its state: the adapter's source) or
``("composition", NAME)`` (its state: the setup in normal form); a state of None means "not served".

``apply_everywhere(broadcast, method, path, body)`` sends the request to every replica
(``broadcast("change", method, path, body)``; each replica answers it with ``answer_change``: the single-process
route over its own engine, reporting as a ``ReplicaAnswer`` the target's state before and after). Then:

- every replica answered 200: that answer (the single-process body);
- every replica answered the same failure (a source that does not load, an unknown name, a malformed body): that
  answer, exactly as the single-process server gives it;
- otherwise (some replicas failed, or answered differently): the replicas that applied the change are put back
  (``broadcast("restore", kind, name, {replica: state before})``: a new adapter or composition is removed again, a
  replaced or removed one is served again as before), and the answer is the first failure's status in the route's
  error shape (OpenAI's ``{"error"}`` on vLLM's routes and ``/v1/compositions``, ``{"detail"}`` on
  ``/v1/adapters``), naming the replica and its reason (a replica that raised, e.g. died: 500), how many replicas
  failed, and what was rolled back (or what could not be, with what to do next).

``broadcast`` gives one item per replica live at the call: its answer, or the exception it raised.
``apply_change(engine, kind, name, state)`` is what a replica does to restore a target (and to replay the
run-time changes, ``after`` of each, when it starts later): serve it as ``state`` (None: stop serving it).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response

from adapterhub.serving.asgi_calls import call_app
from adapterhub.serving.engine import ServingEngine
from adapterhub.serving.openai_errors import openai_error

Broadcast = Callable[..., Awaitable[list[Any]]]
KINDS = ("adapter", "composition")
# (method, path or path prefix ending in "/") -> (kind, where the name is: a body key, or None for the path's end)
_ROUTES: dict[tuple[str, str], tuple[str, str | None]] = {
    ("POST", "/v1/load_lora_adapter"): ("adapter", "lora_name"),
    ("POST", "/v1/unload_lora_adapter"): ("adapter", "lora_name"),
    ("POST", "/v1/adapters"): ("adapter", "name"),
    ("DELETE", "/v1/adapters/"): ("adapter", None),
    ("POST", "/v1/compositions"): ("composition", "name"),
    ("DELETE", "/v1/compositions/"): ("composition", None),
}


@dataclass(frozen=True)
class ReplicaAnswer:
    """One replica's answer to a change: ``previous`` / ``after`` are the target's state there before and after
    the call (None: the replica did not serve it)."""

    replica: str
    status: int
    content_type: str
    body: bytes
    previous: str | None
    after: str | None = None


def change_target(method: str, path: str, body: bytes) -> tuple[str, str] | None:
    """``(kind, name)`` the change ``method path body`` touches (None: not a change route, or the body names
    nothing, which every replica then refuses alike)."""
    path = path.rstrip("/")
    for (verb, route), (kind, key) in _ROUTES.items():
        if verb != method:
            continue
        if key is None and path.startswith(route) and len(path) > len(route):
            return kind, path[len(route) :]
        if key is not None and path == route:
            try:
                parsed = json.loads(body)
            except ValueError:
                return None
            name = parsed.get(key) if isinstance(parsed, dict) else None
            return (kind, name) if isinstance(name, str) and name else None
    return None


def state_of(engine: ServingEngine, kind: str, name: str) -> str | None:
    """What ``engine`` serves under the target now: an adapter's source, a composition's setup (None: nothing)."""
    if kind == "adapter":
        source = engine.registry.sources.get(name)
        return None if source is None else str(source)
    return engine.compositions.texts.get(name)


async def answer_change(
    app: Any, engine: ServingEngine, replica: str, method: str, path: str, body: bytes
) -> ReplicaAnswer:
    """A replica's part of a change: the single-process route (``app``, over ``engine``) answers it, with the
    target's state before and after."""
    target = change_target(method, path, body)
    previous = None if target is None else state_of(engine, *target)
    status, headers, content = await call_app(app, method, path, body)
    after = None if target is None else state_of(engine, *target)
    kind = next((v for k, v in headers if k.lower() == "content-type"), "application/json")
    return ReplicaAnswer(replica, status, kind, content, previous, after)


def _reason(answer: ReplicaAnswer | BaseException) -> tuple[int, str, str | None, str | None]:
    """(status, message, param, code) of a failed replica."""
    if isinstance(answer, BaseException):
        return 500, f"replica raised {type(answer).__name__}: {answer}", None, None
    message, param, code = answer.body.decode(errors="replace"), None, None
    try:
        parsed = json.loads(answer.body)
        if isinstance(parsed.get("error"), dict):
            error = parsed["error"]
            message, param, code = str(error["message"]), error.get("param"), error.get("code")
        elif "detail" in parsed:
            message = str(parsed["detail"])
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return answer.status, f"replica {answer.replica} answered {answer.status}: {message}", param, code


def _error(path: str, status: int, message: str, param: str | None, code: str | None) -> JSONResponse:
    """The route's error shape: ``{"detail"}`` on the project's ``/v1/adapters``, OpenAI's elsewhere."""
    if path.startswith("/v1/adapters"):
        return JSONResponse({"detail": message}, status_code=status)
    return openai_error(status, message, param=param, code=code)


async def apply_everywhere(broadcast: Broadcast, method: str, path: str, body: bytes) -> Response:
    """Apply the change ``method path body`` on every replica, all or none (see the module docstring)."""
    answers = await broadcast("change", method, path, body)
    if not answers:
        return _error(
            path, 503, "No engine replica is running yet; retry once Ray has started them.", None, None
        )
    done = [a for a in answers if isinstance(a, ReplicaAnswer) and a.status == 200]
    failed = [a for a in answers if not (isinstance(a, ReplicaAnswer) and a.status == 200)]
    replied = [a for a in answers if isinstance(a, ReplicaAnswer)]
    if not failed or (
        not done and len(replied) == len(answers) and len({(a.status, a.body) for a in replied}) == 1
    ):
        return Response(replied[0].body, replied[0].status, media_type=replied[0].content_type)
    status, message, param, code = _reason(failed[0])
    message = f"{len(failed)} of {len(answers)} replicas failed; {message}."
    if done:
        target = change_target(method, path, body)
        replicas = ", ".join(sorted(a.replica for a in done))
        if target is None:  # cannot happen for a change some replica applied; said rather than assumed
            message += (
                f" The replica(s) that applied it ({replicas}) could not be rolled back (no name found)."
            )
            return _error(path, status, message, param, code)
        kind, name = target
        previous = {a.replica: a.previous for a in done}
        results = await broadcast("restore", kind, name, previous)
        broken = [r for r in results if isinstance(r, BaseException)]
        if broken:
            message += (
                f" Rolling back the replicas that had applied it ({replicas}) failed: {broken[0]}; remove the "
                f"{kind} {name!r} (and add it again) to make every replica agree."
            )
        else:
            message += f" Rolled back on the replica(s) that had applied it ({replicas}); nothing changed."
    return _error(path, status, message, param, code)


async def apply_change(engine: ServingEngine, kind: str, name: str, state: str | None, *, load: bool) -> None:
    """Make ``engine`` serve the target ``(kind, name)`` as ``state``, replacing what it served under it: an
    adapter from the source ``state`` (``load``: load it now, else on first use), a composition of the setup
    ``state``; ``state`` None: stop serving it (nothing when it does not)."""
    if kind not in KINDS:
        raise ValueError(f"Unknown change target kind {kind!r}; kinds: {', '.join(KINDS)}.")
    if kind == "adapter":
        if state is not None:
            await engine.add_adapter(name, state, load=load)
        elif name in engine.registry.sources:
            await engine.remove_adapter(name)
        return
    if name in engine.compositions.setups:
        engine.compositions.remove(name)
    if state is not None:
        engine.add_composition(name, state)

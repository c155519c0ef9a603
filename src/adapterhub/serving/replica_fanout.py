"""Run-time adapter changes under ``serve-model --ray``: vLLM's ``POST /v1/load_lora_adapter`` and
``/v1/unload_lora_adapter`` applied to every engine replica, all or none.

``apply_everywhere(broadcast, path, body)`` sends the request to every replica (``broadcast("lora", path, body)``;
each replica answers it with the single-process route over its own engine and reports, as a ``ReplicaAnswer``,
the name's source before the call). Then:

- every replica answered 200: that answer (vLLM's ``Success: ...`` text);
- every replica answered the same failure (a source that does not load, an unknown name): that answer, exactly as
  the single-process server gives it;
- otherwise (some replicas failed, or answered differently): the replicas that applied the change are put back
  (``broadcast("restore", name, {replica: previous source or None})``: a new name is unloaded again, a replaced
  or unloaded one is loaded again from its previous source), and the answer is the first failure's status in
  OpenAI's error shape, naming the replica and its reason (a replica that raised, e.g. died: 500), how many
  replicas failed, and what was rolled back (or what could not be, with what to do next).

``broadcast`` gives one item per replica live at the call: its answer, or the exception it raised.
``apply_change(engine, name, source)`` is what a replica does to restore a name (and to replay the run-time
changes when it starts later): serve ``name`` from ``source`` (None: stop serving it).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import Response

from adapterhub.serving.engine import ServingEngine
from adapterhub.serving.openai_errors import openai_error

Broadcast = Callable[..., Awaitable[list[Any]]]


@dataclass(frozen=True)
class ReplicaAnswer:
    """One replica's answer to a load/unload: ``previous`` is the name's source there before the call (None: the
    replica did not serve the name)."""

    replica: str
    status: int
    content_type: str
    body: bytes
    previous: str | None


def lora_name_of(body: bytes) -> str | None:
    """The ``lora_name`` of a load/unload body (None when the body is not a JSON object naming one)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    name = parsed.get("lora_name") if isinstance(parsed, dict) else None
    return name if isinstance(name, str) else None


def _reason(answer: ReplicaAnswer | BaseException) -> tuple[int, str, str | None, str | None]:
    """(status, message, param, code) of a failed replica."""
    if isinstance(answer, BaseException):
        return 500, f"replica raised {type(answer).__name__}: {answer}", None, None
    try:
        error = json.loads(answer.body)["error"]
        message, param, code = str(error["message"]), error.get("param"), error.get("code")
    except (ValueError, KeyError, TypeError):
        message, param, code = answer.body.decode(errors="replace"), None, None
    return answer.status, f"replica {answer.replica} answered {answer.status}: {message}", param, code


async def apply_everywhere(broadcast: Broadcast, path: str, body: bytes) -> Response:
    """Load or unload (``path``) on every replica, all or none (see the module docstring)."""
    answers = await broadcast("lora", path, body)
    if not answers:
        return openai_error(503, "No engine replica is running yet; retry once Ray has started them.")
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
        name = lora_name_of(body)
        previous = {a.replica: a.previous for a in done}
        results = await broadcast("restore", name, previous)
        broken = [r for r in results if isinstance(r, BaseException)]
        replicas = ", ".join(sorted(previous))
        if broken:
            message += (
                f" Rolling back the replicas that had applied it ({replicas}) failed: {broken[0]}; unload "
                f"{name!r} (and load it again) to make every replica agree."
            )
        else:
            message += f" Rolled back on the replica(s) that had applied it ({replicas}); nothing changed."
    return openai_error(status, message, param=param, code=code)


async def apply_change(engine: ServingEngine, name: str, source: str | None, *, load: bool) -> None:
    """Make ``engine`` serve ``name`` from ``source`` (replacing what it served under it; ``load``: load it now,
    else on first use), or, for ``source`` None, stop serving it (nothing when it does not)."""
    if source is not None:
        await engine.add_adapter(name, source, load=load)
    elif name in engine.registry.sources:
        await engine.remove_adapter(name)

"""docs/serving.md against the app: every route it names (``METHOD /path`` in backticks and every ``curl``) exists
with that method, its metrics table lists exactly the metrics ``/metrics`` exposes on a generating server, and its
error examples (a ``curl`` followed by ``# STATUS {"error": ...}``) answer that status, type, param and code."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from starlette.routing import Match

from adapterhub.serving.app import create_app
from adapterhub.serving.engine import EngineConfig, ServingEngine
from serving_client import serve

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
PLACEHOLDER = re.compile(r"\{[^}]+\}|\bNAME\b")


def _doc() -> str:
    return DOC.read_text()


def _curls(text: str) -> list[tuple[list[str], list[str]]]:
    """Each ``curl`` command of the page's code blocks (continuation lines joined, comments dropped) as its
    arguments, with the comment lines that follow it."""
    lines = text.splitlines()
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("curl "):
            i += 1
            continue
        command = line.split("  #")[0]
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + " " + lines[i].strip()
        # a body may continue on the next line inside its quotes
        while command.count("'") % 2:
            i += 1
            command += " " + lines[i].strip()
        i += 1
        comments = []
        while i < len(lines) and lines[i].startswith("#"):
            comments.append(lines[i][1:].strip())
            i += 1
        out.append((shlex.split(command), comments))
    return out


def _request(args: list[str]) -> tuple[str, str, dict | None]:
    """(method, path, JSON body) of a curl command's arguments."""
    url = next(a for a in args if a.startswith("localhost:8080"))
    body = args[args.index("-d") + 1] if "-d" in args else None
    method = args[args.index("-X") + 1] if "-X" in args else "POST" if body is not None else "GET"
    return method, url.removeprefix("localhost:8080"), None if body is None else json.loads(body)


def _documented_routes() -> set[tuple[str, str]]:
    text = _doc()
    routes = {(m, p) for m, p in re.findall(r"`(GET|POST|DELETE) (/[^`\s]*)`", text)}
    routes |= {_request(args)[:2] for args, _ in _curls(text)}
    return routes


@pytest.fixture(scope="module")
def llama_app(tiny_llama_loras):
    directory, dirs = tiny_llama_loras
    engine = ServingEngine.from_pretrained(
        str(directory), adapters={"poems": str(dirs["a"])}, config=EngineConfig(max_wait_ms=1)
    )
    return engine, create_app(engine, token="t")


def test_every_documented_route_exists(llama_app):
    _, app = llama_app
    routes = _documented_routes()
    assert len(routes) >= 18  # the page names them all; a parser that finds nothing fails here

    def served(method: str, path: str) -> bool:  # as the app routes a request (a PARTIAL match: wrong method)
        scope = {"type": "http", "path": path, "root_path": "", "method": method}
        return any(route.matches(scope)[0] == Match.FULL for route in app.routes)

    assert not served("PUT", "/v1/models") and not served("GET", "/v1/no-such-route")
    missing = [f"{m} {p}" for m, p in sorted(routes) if not served(m, PLACEHOLDER.sub("x", p))]
    assert not missing, f"docs/serving.md names routes the app does not serve: {missing}"
    for path in (
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
        "/v1/compositions",
        "/v1/chat/completions",
    ):
        assert ("POST", path) in routes  # the ones this page must document


def test_metrics_table_lists_exactly_the_exposed_metrics(llama_app):
    engine, _ = llama_app
    section = _doc().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    documented = {
        name
        for row in section.splitlines()
        if row.startswith("| `")
        for name in re.findall(r"`(adapterhub_\w+)", row)
    }
    exposed = set(re.findall(r"^# TYPE (\w+) ", engine.metrics.render(), re.M))
    assert "adapterhub_generation_ttft_seconds" in exposed and "adapterhub_generation_running" in exposed
    assert documented == exposed


def test_documented_error_examples_answer_as_shown(tiny_llama_loras):
    directory, dirs = tiny_llama_loras
    examples = []
    for args, comments in _curls(_doc()):
        match = re.match(r"(\d{3}) (\{.*)", " ".join(comments))
        if match:
            examples.append((_request(args), int(match.group(1)), match.group(2)))
    assert len(examples) >= 3

    async def body(client, engine):
        answers = []
        for (method, path, payload), _, _ in examples:
            answers.append(await client.request(method, path, json=payload))
        return answers

    answers = serve(directory, {"poems": dirs["a"]}, body)
    for ((_, path, _), status, shown), answer in zip(examples, answers, strict=True):
        error = answer.json()["error"]
        assert answer.status_code == status, (path, answer.text)
        for key in ("type", "param", "code"):
            assert f'"{key}": {json.dumps(error[key])}' in shown, (key, error, shown)

"""bench/serve/openai_load.py end to end on a tiny random Llama (slow: it starts serve-model in a child process):
every phase reports completed streams with their latencies, and the overload phase meets 429s with Retry-After."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tiny_chat import save_chat_llama

ROOT = Path(__file__).resolve().parents[2]
WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "it",
    "story",
    "lighthouse",
    "keeper",
    "history",
    "printing",
    "press",
    "begins",
    "short",
    "about",
    "three",
    "most",
    "important",
    "ideas",
    "economics",
    "are",
    "here",
    "recipe",
    "for",
    "simple",
    "tomato",
    "soup",
]


def run_bench(tmp_path: Path, *extra: str) -> tuple[dict[str, Any], Path]:
    """Run the bench on a tiny chat Llama (40 registered adapters, 4 resident, 4 streams, 3 s loops) with
    ``extra`` options; ``(its json, its output folder)``."""
    (tmp_path / "model").mkdir()
    save_chat_llama(tmp_path / "model", WORDS, context=256)
    out = tmp_path / "out"
    command = [
        sys.executable,
        str(ROOT / "bench" / "serve" / "openai_load.py"),
        *("--model", str(tmp_path / "model"), "--threads", "1", "--registered", "40", "--resident", "4"),
        *("--seconds", "3", "--concurrency", "4", "--max-queue", "4", *extra),
        *("--work", str(tmp_path / "adapters"), "--out", str(out)),
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    subprocess.run(command, check=True, env=env, timeout=600, cwd=ROOT)
    return json.loads((out / "openai_load.json").read_text()), out


@pytest.mark.slow
def test_load_bench_runs_every_phase(tmp_path: Path) -> None:
    results, out = run_bench(tmp_path, "--requests", "6")
    phases = [name for name in results if name != "args"]
    assert phases[0] == "capacity" and phases[-2:] == ["registered_all", "overload_4x"]
    assert len([p for p in phases if p.startswith("poisson_")]) == 6
    for name in phases[:-1]:
        assert results[name]["completed"] == results[name]["sent"] > 0, name
        assert results[name]["other_errors"] == 0, name
        assert 0 < results[name]["ttft_p50_ms"] <= results[name]["ttft_p99_ms"], name
    overload = results["overload_4x"]
    assert overload["refused_429"] > 0 and overload["completed"] > 0 and overload["retry_after"]
    assert "registered adapters, 4 resident" in (out / "openai_load.md").read_text()


def test_an_unknown_phase_is_refused_naming_the_phases() -> None:
    command = [sys.executable, str(ROOT / "bench" / "serve" / "openai_load.py"), "--phases", "capacity,nope"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "unknown phase(s) nope" in done.stderr and "registered_all" in done.stderr


@pytest.mark.slow
def test_phases_runs_only_the_phases_named(tmp_path: Path) -> None:
    results, out = run_bench(tmp_path, "--phases", "registered_all")
    assert [name for name in results if name != "args"] == ["capacity", "registered_all"]  # capacity always
    assert results["registered_all"]["completed"] == results["registered_all"]["sent"] > 0
    assert "registered adapters, 4 resident" in (out / "openai_load.md").read_text()

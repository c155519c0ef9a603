"""Helpers shared by the golden tests against the `adapters` library's fixtures (tests/fixtures/adapters_lib).

``load_golden(case, attn)``: the fixture's tiny base model (with ``attn_implementation`` when given) under
``adapterhub.init``, its inputs and its ``expected.json``; ``hidden(model, **inputs)``: ``last_hidden_state``
without gradients; ``run_in_adapters_venv(script, *args)``: run ``script`` with that library's own interpreter
(``.venv-adapters``) and fail the test with its output unless it exits 0; ``needs_adapters_venv`` skips a test
when that venv is absent.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import adapterhub

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "adapters_lib"
ADAPTERS_PYTHON = ROOT / ".venv-adapters" / "bin" / "python"
needs_adapters_venv = pytest.mark.skipif(
    not ADAPTERS_PYTHON.exists(), reason="no .venv-adapters (scripts/compat/setup_adapters_venv.sh)"
)


def load_golden(case: str, attn: str | None = None) -> tuple[Any, dict[str, torch.Tensor], dict[str, Any]]:
    expected = json.loads((FIXTURES / case / "expected.json").read_text())
    options = {} if attn is None else {"attn_implementation": attn}
    model = transformers.AutoModel.from_pretrained(FIXTURES / case / "base", **options).eval()
    inputs = {
        "input_ids": torch.tensor(expected["input_ids"]),
        "attention_mask": torch.tensor(expected["attention_mask"]),
    }
    return adapterhub.init(model), inputs, expected


def hidden(model: Any, **inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def run_in_adapters_venv(script: str, *args: str, timeout: int = 300) -> None:
    result = subprocess.run(
        [str(ADAPTERS_PYTHON), "-c", script, *args], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

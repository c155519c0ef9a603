"""bench/serve/adapter_load.py on a tiny random Llama: every phase of a cold load is timed (wall and CPU), and
``--baseline-src`` compares two sources (here the same one) in child processes, with ratios per phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # two child processes, ~30 s
def test_tiny_run_with_a_baseline_reports_every_phase(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    command = [sys.executable, str(ROOT / "bench" / "serve" / "adapter_load.py"), "--tiny"]
    command += ["--work", str(tmp_path / "work"), "--loads", "4", "--warmup", "1", "--rounds", "1"]
    command += ["--baseline-src", str(ROOT / "src"), "--out", str(out)]
    env = os.environ | {"PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["loads"] == 4
    for label in ("baseline", "current"):
        for key in ("ms_per_load", "cpu_ms_per_load"):
            values = result[label][key]
            assert set(values) == {"prepare", "install", "entry", "total"}
            assert all(v > 0 for v in values.values())
            assert abs(values["total"] - sum(values[p] for p in ("prepare", "install", "entry"))) < 0.01
    ratios = result["ratio_current_over_baseline"]["cpu_ms_per_load"]
    assert set(ratios) == {"prepare", "install", "entry", "total"} and all(r > 0 for r in ratios.values())
    assert "current / baseline" in done.stdout

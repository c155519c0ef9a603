"""A hub identifier as SOURCE: the adapter is resolved on an embedded hub and served over a live loopback server
(``BackgroundServer``) with the same predictions as the same adapter served from its folder."""

from __future__ import annotations

import json
import socket
import urllib.request
from urllib.parse import urlparse

import pytest
import transformers

import adapterhub
from adapterhub.hub.embedded import EmbeddedHub
from adapterhub.serving.background import BackgroundServer
from adapterhub.serving.engine import EngineConfig, ServingEngine


def _predict(url: str, payload: dict) -> dict:
    request = urllib.request.Request(
        url + "/v1/predict", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_hub_identifier_source_served_live(tiny_bert_dir, adapter_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_CACHE", str(tmp_path / "cache"))
    with EmbeddedHub(tmp_path / "hub") as hub:
        model = adapterhub.init(transformers.AutoModel.from_pretrained(str(tiny_bert_dir)))
        model.load_adapter(adapter_dirs["cls3"])
        model.push_adapter(
            "cls3",
            owner=hub.owner,
            task="sentiment",
            subtask="rotten_tomatoes",
            token=hub.token,
            hub_url=hub.url,
        )
        engine = ServingEngine.from_pretrained(
            str(tiny_bert_dir),
            adapters={"from-hub": "sentiment/rotten_tomatoes@demo", "from-dir": str(adapter_dirs["cls3"])},
            config=EngineConfig(hub_url=hub.url),
        )
        with BackgroundServer(engine) as server:
            texts = ["the movie was good", "awful"]
            served = _predict(server.url, {"adapter": "from-hub", "inputs": texts, "logits": True})
            local = _predict(server.url, {"adapter": "from-dir", "inputs": texts, "logits": True})
            url = server.url
        assert served["predictions"] == local["predictions"]
        assert engine.registry.sources["from-hub"].kind == "hub"
    address = urlparse(url)
    with socket.socket() as sock, pytest.raises(OSError):  # the server is gone after the block
        sock.settimeout(2)
        sock.connect((address.hostname, address.port))

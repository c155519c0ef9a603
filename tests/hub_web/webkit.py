"""Helpers of the website tests: a seeded hub (adapters made with the library), servers on loopback."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "hub"))

XSS = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
SST_CITATION = """@inproceedings{socher2013sst,
  title = {Recursive Deep Models for Semantic Compositionality Over a Sentiment Treebank},
  author = {Socher, Richard and others},
  year = {2013}
}"""
FUSION_TARGETS = ["sentiment/sst-2@alice", "nli/mnli@ukp", "@ukp/de-lang"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def save_library_adapter(
    directory: Path,
    name: str,
    *,
    config: str = "pfeiffer",
    model_name: str = "prajjwal1/bert-tiny",
    labels: list[str] | None = None,
    seed: int = 0,
) -> Path:
    """An adapter made with the library on a tiny random BERT: init, add_adapter (+ head), save_adapter."""
    import adapterhub
    import tiny_models

    model = tiny_models.build("bert", "base", seed=seed)
    model.config._name_or_path = model_name
    adapterhub.init(model)
    model.add_adapter(name, config=config)
    if labels:
        model.add_classification_head(name, num_labels=len(labels), id2label=dict(enumerate(labels)))
    model.save_adapter(directory, name)
    return directory


@dataclass
class Seeded:
    hub: Any
    app: Any
    tokens: dict[str, str]
    tmp: Path
    published: dict[str, Any] = field(default_factory=dict)


def populate(hub: Any) -> dict[str, str]:
    from adapterhub.hub.cli import SEED_FILE
    from adapterhub.hub.server import service

    with hub.sessions() as s, s.begin():
        service.seed_taxonomy(s, json.loads(SEED_FILE.read_text()))
        admin = service.create_owner(s, "admin", is_admin=True)
        alice = service.create_owner(s, "alice", display_name="Alice Example")
        ukp = service.create_owner(s, "ukp", kind="org", display_name="UKP Lab")
        service.add_member(s, ukp, alice, "admin")
        return {"admin": service.create_token(s, admin), "alice": service.create_token(s, alice)}


def upload(client: Any, token: str, owner: str, name: str, directory: Path, card: dict[str, Any]) -> Any:
    from adapterhub.hub.archive import pack_directory_bytes

    response = client.post(
        f"/api/v1/adapters/{owner}/{name}/versions",
        headers={"Authorization": f"Bearer {token}"},
        data={"card": json.dumps(card)},
        files={"archive": ("a.tar.gz", pack_directory_bytes(directory), "application/gzip")},
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


def fusion_metrics() -> dict[str, float]:
    weights = [[0.62, 0.30, 0.08], [0.45, 0.41, 0.14]]
    out = {"accuracy": 0.71}
    for layer, row in enumerate(weights):
        for target, w in zip(FUSION_TARGETS, row):
            out[f"fusion/{layer}/{target}"] = w
    return out


def seed_adapters(client: Any, tokens: dict[str, str], tmp: Path) -> dict[str, Any]:
    """Publish the site's demo content through the upload API."""
    alice = tokens["alice"]
    out: dict[str, Any] = {}
    sst = save_library_adapter(tmp / "sst", "sst2", labels=["negative", "positive"], seed=1)
    card = {
        "task": "sentiment",
        "subtask": "sst-2",
        "license": "apache-2.0",
        "description": "Pfeiffer adapter trained on SST-2.\nSecond line of the description.",
        "citation": SST_CITATION,
        "metrics": {"accuracy": 0.89, "f1": 0.88},
    }
    out["sst_v1"] = upload(client, alice, "alice", "sst2-pfeiffer", sst, card)
    card["metrics"] = {"accuracy": 0.91, "f1": 0.9}
    out["sst_v2"] = upload(client, alice, "alice", "sst2-pfeiffer", sst, card)
    mnli = save_library_adapter(tmp / "mnli", "mnli", config="houlsby", seed=2)
    out["mnli"] = upload(
        client,
        alice,
        "ukp",
        "mnli-houlsby",
        mnli,
        {"task": "nli", "subtask": "mnli", "license": "mit", "metrics": {"accuracy": 0.83}},
    )
    lang = save_library_adapter(tmp / "de", "de", config="pfeiffer", seed=3)
    out["lang"] = upload(
        client,
        alice,
        "ukp",
        "de-lang",
        lang,
        {"adapter_type": "language", "language": "de", "description": "German language adapter (MLM)."},
    )
    evil = save_library_adapter(tmp / "evil", "evil", seed=4)
    out["evil"] = upload(
        client,
        alice,
        "alice",
        "imdb-evil",
        evil,
        {
            "task": "sentiment",
            "subtask": "imdb",
            "description": XSS,
            "citation": "@misc{x, title={" + XSS + "}}",
            "metrics": {"accuracy": 0.5, "<b>bold</b>": 1.0},
        },
    )
    fusion = save_library_adapter(tmp / "fusion", "fusion", seed=5)
    out["fusion"] = upload(
        client,
        alice,
        "ukp",
        "rte-fusion",
        fusion,
        {
            "task": "nli",
            "subtask": "rte",
            "description": "AdapterFusion of SST-2, MNLI and a German language adapter, trained on RTE.",
            "metrics": fusion_metrics(),
        },
    )
    return out


def make_seeded_hub(tmp: Path) -> Seeded:
    from fastapi.testclient import TestClient

    from adapterhub.hub.server.app import create_app, open_hub
    from adapterhub.hub.server.settings import HubSettings

    settings = HubSettings(db_url=f"sqlite:///{tmp / 'hub.sqlite3'}", storage_url=str(tmp / "storage"))
    hub = open_hub(settings)
    tokens = populate(hub)
    app = create_app(hub=hub, web=True)
    seeded = Seeded(hub, app, tokens, tmp)
    with TestClient(app) as client:
        seeded.published = seed_adapters(client, tokens, tmp)
    return seeded


class ThreadServer:
    """uvicorn serving ``app`` from a thread of this process, on 127.0.0.1 and a free port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/api/v1/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.url} did not come up")

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(10)

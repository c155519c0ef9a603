"""The website's method filter (search page) and the method's own options on the adapter page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import hubkit
import pytest
import webkit


@pytest.fixture(scope="module")
def method_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    tmp = tmp_path_factory.mktemp("hub-web-methods")
    with pytest.MonkeyPatch.context() as mp:
        hubkit.isolate_environment(mp, tmp)
        seeded = webkit.make_seeded_hub(tmp)
        token = seeded.tokens["alice"]
        card = {"task": "sentiment", "subtask": "sst-2", "license": "mit", "metrics": {"accuracy": 0.8}}
        for name, config in (
            ("sst2-lora", "lora[r=4,alpha=16,targets=[q,v]]"),
            ("sst2-prefix", "prefix_tuning[prefix_length=7]"),
        ):
            directory = webkit.save_library_adapter(tmp / name, name, config=config)
            with TestClient(seeded.app) as client:
                webkit.upload(client, token, "alice", name, directory, card)
        try:
            with TestClient(seeded.app, raise_server_exceptions=True) as client:
                yield client
        finally:
            seeded.hub.engine.dispose()


def _names(page: str) -> list[str]:
    block = page.split('id="results"', 1)[1] if 'id="results"' in page else ""
    return re.findall(r'class="card-title" href="[^"]+">(@[^<]+)</a>', block)


def test_search_page_filters_by_method(method_client: Any) -> None:
    page = method_client.get("/search").text
    assert '<select name="method">' in page
    assert '<option value="lora">lora</option>' in page and '<option value="bottleneck">' in page
    lora = method_client.get("/search?method=lora").text
    assert _names(lora) == ["@alice/sst2-lora"]
    assert '<option value="lora" selected>' in lora
    prefix = method_client.get("/search?method=prefix_tuning&q=sst2").text
    assert _names(prefix) == ["@alice/sst2-prefix"]
    assert "@alice/sst2-lora" not in _names(method_client.get("/search?method=bottleneck").text)
    assert method_client.get("/api/v1/adapters?method=lora").json()["total"] == 1


def test_adapter_page_shows_the_methods_own_options(method_client: Any) -> None:
    page = method_client.get("/adapters/alice/sst2-lora").text
    assert "Method options" in page
    for key, value in (("r", "4"), ("alpha", "16.0"), ("targets", "q, v")):
        assert f"<dt>{key}</dt><dd><code>{value}</code></dd>" in page, key
    prefix = method_client.get("/adapters/alice/sst2-prefix").text
    assert "<dt>prefix_length</dt><dd><code>7</code></dd>" in prefix

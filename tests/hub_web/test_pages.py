"""Every page of the website through FastAPI's TestClient: status codes, content, filters, escaping, 404s."""

from __future__ import annotations

import hashlib
import html
import re
from typing import Any

import pytest
import webkit

PAGES = [
    "/",
    "/explore/tasks",
    "/explore/languages",
    "/explore/tasks/sentiment",
    "/explore/tasks/sentiment/sst-2",
    "/explore/languages/de",
    "/search",
    "/search?q=sst",
    "/fusion",
    "/owners/alice",
    "/owners/ukp",
    "/adapters/alice/sst2-pfeiffer",
    "/adapters/ukp/rte-fusion",
    "/adapters/ukp/de-lang",
]


def names_in(page: str) -> list[str]:
    """The adapters listed in a page's results, in order."""
    block = page.split('id="results"', 1)[1] if 'id="results"' in page else ""
    return re.findall(r'class="card-title" href="[^"]+">(@[^<]+)</a>', block)


@pytest.mark.parametrize("path", PAGES)
def test_page_renders(client: Any, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in r.text
    assert "<script>" not in r.text  # no inline scripts: the CSP forbids them


def test_home_counts_match_the_api(client: Any) -> None:
    stats = client.get("/api/v1/stats").json()
    page = client.get("/").text
    for key in ("adapters", "tasks", "languages", "owners", "downloads"):
        shown = re.search(rf'data-count="{key}">([^<]+)<', page)
        assert shown is not None, key
        assert shown.group(1).replace(",", "") == str(stats[key])
    assert "@alice/sst2-pfeiffer" in page  # recently published


def test_explore_redirects_to_tasks(client: Any) -> None:
    r = client.get("/explore", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/explore/tasks"


def test_explore_tasks_and_languages(client: Any) -> None:
    tasks = client.get("/explore/tasks").text
    assert 'href="/explore/tasks/sentiment"' in tasks
    assert 'href="/explore/tasks/sentiment/sst-2"' in tasks
    assert "Natural language inference" in tasks
    langs = client.get("/explore/languages").text
    assert 'href="/explore/languages/de"' in langs and "German" in langs


def test_task_and_subtask_pages_list_their_adapters(client: Any) -> None:
    task = client.get("/explore/tasks/nli").text
    assert set(names_in(task)) == {"@ukp/mnli-houlsby", "@ukp/rte-fusion"}
    assert 'href="/explore/tasks/nli/mnli"' in task
    sub = client.get("/explore/tasks/sentiment/sst-2").text
    assert names_in(sub) == ["@alice/sst2-pfeiffer"]
    assert "Ranked by <strong>accuracy</strong>" in sub
    lang = client.get("/explore/languages/de").text
    assert names_in(lang) == ["@ukp/de-lang"]


def test_filters_model_type_model_name_and_config(client: Any) -> None:
    assert names_in(client.get("/explore/tasks/nli?model_type=gpt2").text) == []
    assert len(names_in(client.get("/explore/tasks/nli?model_type=bert").text)) == 2
    assert len(names_in(client.get("/search?model_name=prajjwal1/bert-tiny").text)) >= 5
    assert names_in(client.get("/search?model_name=roberta-base").text) == []
    assert names_in(client.get("/search?config=houlsby").text) == ["@ukp/mnli-houlsby"]
    page = client.get("/search").text
    # the config drop-down offers each config present, by its hash prefix
    offered = re.findall(r'<option value="([0-9a-f]{12})"', page)
    assert len(offered) == 2
    for prefix in offered:
        hits = names_in(client.get(f"/search?config={prefix}").text)
        assert hits and all(h for h in hits)
    assert "@ukp/mnli-houlsby" in names_in(client.get(f"/search?config={offered[0]}").text) + names_in(
        client.get(f"/search?config={offered[1]}").text
    )


def test_sort_by_score_and_recency(client: Any) -> None:
    by_score = names_in(client.get("/search?sort=score").text)
    assert by_score[0] == "@alice/sst2-pfeiffer"  # accuracy 0.91 is the best score
    by_recent = names_in(client.get("/search?sort=recent").text)
    assert by_recent[0] == "@ukp/rte-fusion"  # published last
    assert set(by_score) == set(by_recent)


def test_full_text_search_and_suggestions(client: Any) -> None:
    assert names_in(client.get("/search?q=sst2").text) == ["@alice/sst2-pfeiffer"]
    assert set(names_in(client.get("/search?q=sst").text)) == {"@alice/sst2-pfeiffer", "@ukp/rte-fusion"}
    assert names_in(client.get("/search?q=MLM").text) == ["@ukp/de-lang"]
    assert set(names_in(client.get("/search?q=ukp").text)) == {
        "@ukp/mnli-houlsby",
        "@ukp/de-lang",
        "@ukp/rte-fusion",
    }
    miss = client.get("/search?q=sst2-pfeifer").text
    assert "No adapter matches" in miss
    assert 'href="/adapters/alice/sst2-pfeiffer"' in miss or "sst2-pfeiffer" in miss


@pytest.mark.parametrize(
    "query",
    [
        "page=abc",
        "page=0",
        "page=999999999999",
        "sort=evil",
        "adapter_type=<x>",
        "q=" + "a" * 5000,
        "q=%25_%5C",
        "model_type=%3Cscript%3E",
        "config=zz",
        "config=deadbeef",
        "owner=no%20such",
    ],
)
def test_odd_query_strings_never_fail(client: Any, query: str) -> None:
    r = client.get("/search?" + query)
    assert r.status_code == 200
    assert "<script>" not in r.text.split("</header>", 1)[1]


def test_adapter_page_content(client: Any, seeded: webkit.Seeded) -> None:
    page = client.get("/adapters/alice/sst2-pfeiffer").text
    text = html.unescape(page)
    assert 'model.load_adapter("sentiment/sst-2@alice", set_active=True' in text
    assert 'AutoModel.from_pretrained("prajjwal1/bert-tiny")' in text
    assert 'class="copy" data-copy-target="snippet-code"' in page
    v1, v2 = seeded.published["sst_v1"], seeded.published["sst_v2"]
    for v in (v1, v2):
        assert v["sha256"] in page
        assert f'href="{v["archive_url"]}"' in page
    assert "@alice/sst2-pfeiffer:2" in text  # pinned form
    assert '"reduction_factor": 16' in text  # pretty config JSON
    assert re.search(r"<td>0</td><td>negative</td>", page) and "positive" in page
    assert "@inproceedings{socher2013sst," in text
    assert "apache-2.0" in page
    assert "0.91" in page and "0.89" in page


def test_download_link_serves_the_checksummed_archive(client: Any, seeded: webkit.Seeded) -> None:
    v = seeded.published["sst_v1"]
    body = client.get(v["archive_url"]).content
    assert hashlib.sha256(body).hexdigest() == v["sha256"]
    assert len(body) == v["size"]


def test_version_parameter_selects_a_version(client: Any) -> None:
    page = client.get("/adapters/alice/sst2-pfeiffer?version=1").text
    assert 'Scores <span class="muted">(v1)</span>' in page
    scores = page.split('id="metrics"', 1)[1].split("</section>", 1)[0]
    assert "0.89" in scores and "0.91" not in scores
    assert "@alice/sst2-pfeiffer:1" in html.unescape(page)
    # an unknown version falls back to the latest
    assert "(v2)" in client.get("/adapters/alice/sst2-pfeiffer?version=9").text


def test_model_parameter_changes_the_snippet(client: Any) -> None:
    page = client.get('/adapters/alice/sst2-pfeiffer?model=my/bert"model').text
    assert "from_pretrained(&#34;my/bert\\&#34;model&#34;)" in page or "from_pretrained(&#34;my/bert" in page
    assert 'from_pretrained("my/bert\\"model")' in html.unescape(page)


def test_card_text_is_escaped(client: Any) -> None:
    for path in ("/adapters/alice/imdb-evil", "/search?q=pwned", "/explore/tasks/sentiment/imdb", "/"):
        page = client.get(path).text
        assert webkit.XSS not in page, path
        assert "<img src=x" not in page, path
        assert "&lt;script&gt;alert(" in page, path
    page = client.get("/adapters/alice/imdb-evil").text
    assert "&lt;b&gt;bold&lt;/b&gt;" in page  # a metric name with markup
    assert "<b>bold</b>" not in page


def test_language_adapter_page(client: Any) -> None:
    page = html.unescape(client.get("/adapters/ukp/de-lang").text)
    assert 'model.load_adapter("de@ukp"' in page
    assert "language adapter" in page


def test_fusion_listing_and_heatmap(client: Any) -> None:
    listing = client.get("/fusion").text
    assert names_in(listing) == ["@ukp/rte-fusion"]
    page = client.get("/adapters/ukp/rte-fusion").text
    assert 'id="heatmap"' in page
    assert len(re.findall(r"<rect [^>]*data-value=", page)) == 6
    assert 'data-value="0.6200"' in page and 'data-value="0.0800"' in page
    for target in webkit.FUSION_TARGETS:
        assert html.escape(target) in page
    # the activations are not listed as scores
    scores = page.split('id="metrics"', 1)[1].split("</section>", 1)[0]
    assert "fusion/" not in scores
    assert 'id="heatmap"' not in client.get("/adapters/alice/sst2-pfeiffer").text


def test_owner_page(client: Any) -> None:
    page = client.get("/owners/ukp").text
    assert "Organisation" in page and 'href="/owners/alice"' in page
    assert set(names_in(page)) == {"@ukp/mnli-houlsby", "@ukp/de-lang", "@ukp/rte-fusion"}


def test_unknown_adapter_is_a_404_with_close_matches(client: Any) -> None:
    r = client.get("/adapters/alice/sst2-pfeifer")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert '<a href="/adapters/alice/sst2-pfeiffer">@alice/sst2-pfeiffer</a>' in r.text
    # the right name under the wrong owner: suggested across owners
    r = client.get("/adapters/ukp/sst2-pfeiffer")
    assert r.status_code == 404 and 'href="/adapters/alice/sst2-pfeiffer"' in r.text
    r = client.get("/adapters/alcie/sst2-pfeiffer")
    assert r.status_code == 404 and 'href="/owners/alice"' in r.text


def test_unknown_taxonomy_and_paths(client: Any) -> None:
    r = client.get("/explore/tasks/sentimnt")
    assert r.status_code == 404 and 'href="/search?q=sentiment"' in r.text
    r = client.get("/explore/tasks/sentiment/sst2")
    assert r.status_code == 404 and 'href="/explore/tasks/sentiment/sst-2"' in r.text
    r = client.get("/explore/languages/deu")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    r = client.get("/owners/nobody")
    assert r.status_code == 404
    r = client.get("/no/such/page")
    assert r.status_code == 404 and "There is no page at this address" in r.text
    xss = client.get("/adapters/alice/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
    assert xss.status_code == 404 and "<script>alert(1)" not in xss.text


def test_api_errors_stay_json(client: Any) -> None:
    r = client.get("/api/v1/no-such-endpoint")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/api/v1/adapters/alice/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_adapter"
    r = client.get("/api/v1/tasks/nope")
    assert r.status_code == 404 and r.json()["error"]["candidates"] == []


def test_static_assets(client: Any) -> None:
    css = client.get("/static/site.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    js = client.get("/static/site.js")
    assert js.status_code == 200 and "navigator.clipboard" in js.text
    assert client.get("/static/../routes.py").status_code == 404


def test_snippet_uses_the_qualified_name_when_the_short_one_is_ambiguous(
    client: Any, seeded: webkit.Seeded
) -> None:
    card = {"task": "topic", "subtask": "ag_news", "metrics": {"accuracy": 0.8}}
    for i, name in enumerate(("news-a", "news-b")):
        directory = webkit.save_library_adapter(seeded.tmp / name, name, seed=10 + i)
        webkit.upload(client, seeded.tokens["alice"], "alice", name, directory, card)
    page = html.unescape(client.get("/adapters/alice/news-a").text)
    assert 'model.load_adapter("@alice/news-a", set_active=True' in page
    assert "fully qualified name" in page
    sub = client.get("/explore/tasks/topic/ag_news").text
    assert set(names_in(sub)) == {"@alice/news-a", "@alice/news-b"}


def test_the_app_without_the_website(seeded: webkit.Seeded) -> None:
    from fastapi.testclient import TestClient

    from adapterhub.hub.server.app import create_app

    app = create_app(hub=seeded.hub, web=False)
    with TestClient(app) as c:
        r = c.get("/")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")

"""The website in a real headless Chromium (Playwright driving Debian's /usr/bin/chromium).

Skipped with the reason when Playwright or Chromium is missing; ``scripts/browser/install_chromium.sh`` installs
Chromium (``playwright install`` is never used: it downloads its own browsers). Screenshots go to a temporary
folder, and also to ``$ADAPTERHUB_WEB_SCREENSHOTS`` when that is set.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webkit

CHROMIUM = os.environ.get("ADAPTERHUB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright; no browser download)"
)
if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(
        f"Chromium is not installed at {CHROMIUM}: run scripts/browser/install_chromium.sh",
        allow_module_level=True,
    )

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(seeded: webkit.Seeded) -> Iterator[webkit.ThreadServer]:
    with webkit.ThreadServer(seeded.app) as srv:
        yield srv


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("ADAPTERHUB_WEB_SCREENSHOTS")

    def save(page_or_locator: Any, name: str, **kwargs: Any) -> Path:
        path = folder / f"{name}.png"
        page_or_locator.screenshot(path=str(path), **kwargs)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    return save


@pytest.fixture(scope="module")
def browser_context(server: webkit.ThreadServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    page = browser_context.new_page()
    errors: list[str] = []
    dialogs: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def on_dialog(d: Any) -> None:
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.console_errors = errors  # type: ignore[attr-defined]
    page.dialogs = dialogs  # type: ignore[attr-defined]
    yield page
    page.close()


def test_explore_to_adapter_page_and_copy_the_code(page: Any, server: Any, shots: Any) -> None:
    page.goto(server.url + "/")
    assert page.locator('[data-count="adapters"]').inner_text().strip() != "0"
    shots(page, "home", full_page=True)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Tasks").click()
    page.wait_for_url("**/explore/tasks")
    page.locator("#tasks").get_by_role("link", name="Sentiment analysis").click()
    page.wait_for_url("**/explore/tasks/sentiment")
    page.locator("#subtasks").get_by_role("link", name="SST-2").click()
    page.wait_for_url("**/explore/tasks/sentiment/sst-2")
    shots(page, "subtask", full_page=True)
    page.locator("#results").get_by_role("link", name="@alice/sst2-pfeiffer").click()
    page.wait_for_url("**/adapters/alice/sst2-pfeiffer")
    snippet = page.locator("#snippet-code").inner_text()
    assert 'model.load_adapter("sentiment/sst-2@alice", set_active=True' in snippet

    button = page.locator('button.copy[data-copy-target="snippet-code"]')
    button.click()
    sync_api.expect(button).to_have_text("Copied")
    sync_api.expect(button).to_have_attribute("data-copied", "true")
    sync_api.expect(page.locator("#snippet-code-status")).to_have_text("Copied to the clipboard")
    clipboard = page.evaluate("navigator.clipboard.readText()")
    assert clipboard == snippet
    shots(page, "adapter", full_page=True)
    sync_api.expect(button).to_have_text("Copy", timeout=6000)  # the state resets
    assert page.console_errors == []


def test_model_field_rewrites_the_snippet(page: Any, server: Any) -> None:
    page.goto(server.url + "/adapters/alice/sst2-pfeiffer")
    page.locator("#snippet-model").fill('my-org/bert-"base"')
    code = page.locator("#snippet-code").inner_text()
    assert 'AutoModel.from_pretrained("my-org/bert-\\"base\\"")' in code
    assert "sentiment/sst-2@alice" in code
    page.locator('button.copy[data-copy-target="snippet-code"]').click()
    assert page.evaluate("navigator.clipboard.readText()") == code


def test_search_and_follow_a_result(page: Any, server: Any, shots: Any) -> None:
    page.goto(server.url + "/")
    page.locator("#hero-q").fill("mnli")
    page.locator("#hero-q").press("Enter")
    page.wait_for_url("**/search?q=mnli*")
    sync_api.expect(page.locator("#result-count")).to_have_text(
        "2 adapters"
    )  # the houlsby adapter, the fusion
    shots(page, "search", full_page=True)
    page.locator("#results").get_by_role("link", name="@ukp/mnli-houlsby").click()
    page.wait_for_url("**/adapters/ukp/mnli-houlsby")
    assert "nli/mnli@ukp" in page.locator("#snippet-code").inner_text()


def test_filters_in_the_browser(page: Any, server: Any) -> None:
    page.goto(server.url + "/explore/tasks/nli")
    sync_api.expect(page.locator("#result-count")).to_have_text("2 adapters")
    houlsby = page.locator("select[name=config] option", has_text="houlsby").get_attribute("value")
    page.locator("select[name=config]").select_option(houlsby)
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**config=*")
    sync_api.expect(page.locator("#result-count")).to_have_text("1 adapter")
    sync_api.expect(page.locator("#results .card-title")).to_have_text("@ukp/mnli-houlsby")
    page.locator("select[name=sort]").select_option("recent")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url("**sort=recent*")
    sync_api.expect(page.locator("#result-count")).to_have_text("1 adapter")


PHONE_PAGES = [
    "/",
    "/explore/tasks",
    "/explore/tasks/sentiment/sst-2",
    "/search?q=ukp",
    "/adapters/alice/sst2-pfeiffer",
    "/adapters/ukp/rte-fusion",
    "/adapters/alice/nope",
]


def test_phone_viewport_has_no_horizontal_scroll(browser_context: Any, server: Any, shots: Any) -> None:
    page = browser_context.new_page()
    page.set_viewport_size({"width": 375, "height": 812})
    try:
        for path in PHONE_PAGES:
            page.goto(server.url + path)
            width, client = page.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
            )
            assert width <= client, f"{path}: {width}px of content in a {client}px viewport"
            name = "phone-" + (
                path.strip("/").replace("/", "-").replace("?", "-").replace("=", "-") or "home"
            )
            shots(page, name, full_page=True)
        # the copy button works with touch-sized layout too
        page.goto(server.url + "/adapters/alice/sst2-pfeiffer")
        page.locator('button.copy[data-copy-target="snippet-code"]').click()
        sync_api.expect(page.locator('button.copy[data-copy-target="snippet-code"]')).to_have_text("Copied")
    finally:
        page.close()


def test_fusion_heatmap_renders(page: Any, server: Any, shots: Any) -> None:
    page.goto(server.url + "/fusion")
    page.locator("#results").get_by_role("link", name="@ukp/rte-fusion").click()
    page.wait_for_url("**/adapters/ukp/rte-fusion")
    heatmap = page.locator("#heatmap")
    sync_api.expect(heatmap).to_be_visible()
    box = heatmap.bounding_box()
    assert box is not None and box["width"] > 200 and box["height"] > 80
    cells = heatmap.locator("rect[data-value]")
    assert cells.count() == 6
    fills = {cells.nth(i).get_attribute("fill") for i in range(6)}
    assert len(fills) == 6  # six different weights, six shades
    # the darkest cell is the largest weight
    values = [float(cells.nth(i).get_attribute("data-value")) for i in range(6)]
    assert max(values) == 0.62
    shots(heatmap, "fusion-heatmap")
    shots(page, "fusion", full_page=True)
    page.get_by_text("Numbers").click()
    sync_api.expect(page.locator(".heat-table")).to_be_visible()
    assert page.console_errors == []


def test_card_markup_is_inert(page: Any, server: Any) -> None:
    page.goto(server.url + "/adapters/alice/imdb-evil")
    sync_api.expect(page.locator("#description")).to_have_text(webkit.XSS)
    page.wait_for_timeout(300)
    assert page.dialogs == []
    assert page.locator("#description img").count() == 0


def test_unknown_adapter_page_suggests_close_matches(page: Any, server: Any) -> None:
    response = page.goto(server.url + "/adapters/alice/sst2-pfeifer")
    assert response is not None and response.status == 404
    page.locator("#suggestions").get_by_role("link", name="@alice/sst2-pfeiffer").click()
    page.wait_for_url("**/adapters/alice/sst2-pfeiffer")

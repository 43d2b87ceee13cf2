"""The built documentation site (``docs/_build/html``), checked as a reader's browser sees it.

Run after the build (``tox -e docs`` does both): ``pytest docs/tests``. The site is served
with ``http.server`` on 127.0.0.1 and opened in headless Chromium, Debian's ``chromium``
package driven by Playwright (which cannot download a browser of its own here). The
screenshot of the chapter page is written to ``docs/_build/screenshots/chapter.png``.
"""

from __future__ import annotations

import configparser
import functools
import http.server
import re
import sys
import threading
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1]
SITE = DOCS / "_build" / "html"
SCREENSHOTS = DOCS / "_build" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
sys.path.insert(0, str(DOCS / "tools"))
import pages  # noqa: E402

FRAMEWORKS = list(pages.frameworks.NAMES)


# The chapter (written by docs/tools/book.py from docs/book/resnet.md), and another page with tab sets.
TAB_PAGE = "_generated/chapter.html"
OTHER_PAGE = "install.html"


@pytest.fixture(scope="module", autouse=True)
def built_site():
    if not (SITE / "index.html").is_file():
        pytest.fail(f"no built site in {SITE}: run sphinx-build -b html docs {SITE.relative_to(DOCS.parent)} first")


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free one
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per request would bury pytest's output
        pass


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Errors(list):
    """Console messages of type error, uncaught page errors, and the requests that failed
    (which the console reports without their address), as 'page: text'."""

    def watch(self, page):
        page.on("console", lambda m: self.append(f"{page.url}: console {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.append(f"{page.url}: page error {e}"))
        page.on("response", lambda r: self.append(f"{page.url}: HTTP {r.status} {r.url}") if r.status >= 400 else None)
        page.on("requestfailed", lambda r: self._failed(page, r))
        return page

    def _failed(self, page, request):
        if request.failure != "net::ERR_ABORTED":  # cancelled by the next navigation, not a failure
            self.append(f"{page.url}: request failed {request.url} ({request.failure})")


@pytest.fixture
def errors():
    return Errors()


@pytest.fixture
def page(browser, errors):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield errors.watch(context.new_page())
    context.close()


def open_page(page, server, path: str):
    page.goto(server + path, wait_until="load")
    return page


def tab_state(page) -> list[dict]:
    """Per tab set synced on 'framework': its frameworks and the ones whose panel is visible."""
    return page.evaluate(
        """() => Array.from(document.querySelectorAll('.sd-tab-set')).map(set => {
            const labels = Array.from(set.querySelectorAll(':scope > label.sd-tab-label'));
            return {
                group: labels.length ? labels[0].dataset.syncGroup : null,
                ids: labels.map(l => l.dataset.syncId),
                visible: labels.filter(l => {
                    const panel = l.nextElementSibling;
                    return panel && panel.classList.contains('sd-tab-content') && panel.checkVisibility()
                        && panel.getBoundingClientRect().height > 0;
                }).map(l => l.dataset.syncId),
            };
        })"""
    )


def framework_sets(page) -> list[dict]:
    sets = tab_state(page)
    assert sets, f"{page.url} has no tab sets"
    for s in sets:
        assert s["group"] == "framework", f"a tab set on {page.url} is not in the sync group 'framework': {s}"
        assert set(s["ids"]) <= set(FRAMEWORKS), f"unknown sync ids on {page.url}: {s['ids']}"
    return sets


def assert_shows(page, name: str) -> None:
    """Every tab set with a ``name`` tab shows that tab's panel and no other; none shows PyTorch's
    unless ``name`` is torch."""
    sets = framework_sets(page)
    for s in sets:
        if name in s["ids"]:
            assert s["visible"] == [name], f"{page.url}: a tab set with {s['ids']} shows {s['visible']}, not {name}"
        if name != "torch":
            assert "torch" not in s["visible"], f"{page.url}: PyTorch's panel is visible in a tab set {s['ids']}"
    assert any(name in s["ids"] for s in sets), f"{page.url} has no {name} tab"


def click_tab(page, name: str) -> None:
    page.locator(f'label.sd-tab-label[data-sync-id="{name}"]').first.click()


# ---- without a browser ---------------------------------------------------------------------
def test_every_local_link_and_image_resolves():
    assert pages.broken_links(SITE) == []


def test_install_page_shows_the_versions_tox_tests():
    text = (SITE / "install.html").read_text(encoding="utf-8")
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(DOCS.parent / "tox.ini", encoding="utf-8")
    pins = [p for name, ps in pages.tested_pins(tox).items() for p in ps]
    assert pins, "tox.ini pins no framework"
    for pin in pins:
        assert pin.replace("<", "&lt;") in text, f"install.html does not show tox.ini's {pin}"


def test_cross_framework_page_is_generated_from_traces():
    text = (SITE / "cross_framework.html").read_text(encoding="utf-8")
    assert "compare.png" in text, "the comparison plot is missing"
    assert re.search(r"Initial weights:</strong> bit-identical in all \d+ traces", text), (
        "the page does not report bit-identical initial weights"
    )


# ---- in Chromium ---------------------------------------------------------------------------
def test_jax_tab_switches_every_tab_set(page, server, errors):
    open_page(page, server, TAB_PAGE)
    first = framework_sets(page)
    assert all(s["visible"] == [s["ids"][0]] for s in first), f"not one open tab per set at first: {first}"
    click_tab(page, "jax")
    assert_shows(page, "jax")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "chapter.png"))  # the artifact: the chapter as a reader sees it
    assert not errors, errors


def test_choice_survives_other_pages_and_reload(page, server, errors):
    open_page(page, server, TAB_PAGE)
    click_tab(page, "jax")
    open_page(page, server, OTHER_PAGE)
    assert_shows(page, "jax")
    page.go_back(wait_until="load")
    assert page.url.endswith(TAB_PAGE)
    assert_shows(page, "jax")
    page.reload(wait_until="load")
    assert_shows(page, "jax")
    assert not errors, errors


def test_url_parameter_selects_the_framework(page, server, errors):
    open_page(page, server, TAB_PAGE)
    click_tab(page, "jax")  # an earlier choice: the parameter wins over it
    open_page(page, server, f"{TAB_PAGE}?framework=mxnet")
    assert_shows(page, "mxnet")
    open_page(page, server, OTHER_PAGE)  # and is remembered
    assert_shows(page, "mxnet")
    assert not errors, errors


def test_every_page_loads_its_images_without_console_errors(page, server, errors):
    paths = sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html"))
    assert TAB_PAGE in paths and "index.html" in paths
    broken = []
    for path in paths:
        open_page(page, server, path)
        broken += [
            f"{path}: {src}"
            for src in page.evaluate(
                "() => Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
            )
        ]
    assert broken == [], "images that did not load"
    assert not errors, errors

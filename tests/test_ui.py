"""The page itself, as a person sees it: headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import AppServer

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextmanager
def browser() -> Iterator[Callable[..., object]]:
    """Headless Chromium; yields `open_page(url, height=900)`, which opens a 1280-px-wide page in a fresh
    context (no shared login)."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)

        def open_page(url: str, height: int = 900) -> object:
            page = chromium.new_context(viewport={"width": 1280, "height": height}).new_page()
            page.goto(url)
            return page

        try:
            yield open_page
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def page(tiny_app: AppServer) -> Iterator[object]:
    with browser() as open_page:
        page = open_page(tiny_app.url)
        page.get_by_role("tab", name="System").wait_for(timeout=30_000)  # Gradio renders client-side
        yield page


def test_every_tab_is_there(page: object) -> None:
    for title in ("Chat", "System"):
        assert page.get_by_role("tab", name=title).count() == 1, f"no {title} tab"


def test_chat_streams_a_reply_with_its_speed_into_the_page(page: object) -> None:
    page.get_by_role("tab", name="Chat").click()
    box = page.get_by_placeholder("Type a message...")
    box.fill("hello")
    box.press("Enter")
    # The speed note under the reply appears once the stream is done.
    page.get_by_text("tokens/s").first.wait_for(timeout=60_000)
    assert "Tiny Llama" in page.get_by_text("tokens/s").first.inner_text()


def test_random_weights_are_labelled(page: object) -> None:
    page.get_by_role("tab", name="Chat").click()
    # One compact line under the picker says so; the full sentence is on demand.
    assert page.locator("summary", has_text="Random weights").first.is_visible()


def test_system_tab_shows_the_loaded_model_live(page: object) -> None:
    page.get_by_role("tab", name="System").click()
    # Gradio's table keeps a hidden measuring copy of each cell; look at the visible one.
    page.locator("span.text", has_text="on device").first.wait_for(timeout=10_000)  # the chat above loaded it
    assert page.get_by_text("Device:").first.is_visible()
    page.get_by_role("button", name="Unload").first.click()
    page.locator("span.text", has_text="not loaded").first.wait_for(timeout=10_000)


def test_system_status_polls_only_while_the_system_tab_is_open(page: object) -> None:
    from modules.tabs.system import REFRESH_SECONDS

    joins: list[str] = []  # the queued events the page starts: the status timer's ticks among them
    page.on("request", lambda r: joins.append(r.url) if r.method == "POST" and "/queue/join" in r.url else None)
    window = 2.5 * REFRESH_SECONDS  # long enough for two ticks if the timer were running
    page.get_by_role("tab", name="Chat").click()
    page.wait_for_timeout(window * 1000)
    assert joins == [], "the status timer ticked while another tab was open"
    page.get_by_role("tab", name="System").click()
    deadline = window * 1000
    while len(joins) < 2 and deadline > 0:
        page.wait_for_timeout(100)
        deadline -= 100
    assert len(joins) >= 2, "the status timer did not tick while the System tab was open"
    page.get_by_role("tab", name="Chat").click()
    after_leaving = len(joins)
    page.wait_for_timeout(window * 1000)
    assert len(joins) <= after_leaving + 1, "the status timer kept ticking after the System tab was left"

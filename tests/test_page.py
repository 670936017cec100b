"""The page as a person meets it, in headless Chromium: errors in place, results in view, Stop that says so."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from modules.tiny import build_tiny_catalog
from tests.conftest import AppServer
from tests.test_ui import CHROMIUM, CHROMIUM_FLAGS, playwright_api

DESKTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}
SLOW = 120_000  # ms: a tiny model on two shared cores; generous, never a speed target


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def open_page(browser: object, url: str, viewport: dict[str, int]) -> object:
    page = browser.new_page(viewport=viewport)
    page.goto(url)
    page.get_by_role("tab").first.wait_for(timeout=30_000)  # Gradio renders client-side
    return page


def open_tab(page: object, tab_id: str) -> None:
    """Click a tab as a person would: on a narrow screen some tabs sit behind "More tabs"."""
    tab = page.locator(f'[role="tab"][data-tab-id="{tab_id}"]')
    if tab.count() == 0 or not tab.is_visible():
        page.get_by_role("button", name="More tabs").click()
        title = {"pointcloud": "3D"}.get(tab_id, tab_id.capitalize())
        page.locator(".overflow-dropdown button", has_text=title).click()
    else:
        tab.click()


# -- Chat: an error never locks the conversation ----------------------------------------------------


@pytest.fixture(scope="module")
def chat_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """Chat only: the tiny model, and a model whose files are nowhere, so loading it fails."""
    tiny = build_tiny_catalog().tasks["chat"].models[0]
    base = {"wrapper": "transformers-chat", "license": "apache-2.0"}
    catalogue = {
        "tasks": {
            "chat": {
                "default": "tiny-chat",
                "models": [
                    {**base, "id": "tiny-chat", "name": "Tiny Llama", "source": {"path": tiny.source.path}, "random_weights": True},
                    {**base, "id": "absent", "name": "Absent Model", "source": {"hub": "atelier-tests/absent-model"}},
                ],
            }
        }
    }
    workdir = tmp_path_factory.mktemp("chat-errors")
    path = Path(workdir) / "models.yaml"
    path.write_text(yaml.safe_dump(catalogue))
    with AppServer(["--models", str(path), "--no-mcp"], workdir, env={"HF_HUB_OFFLINE": "1"}) as server:
        yield server


def send(page: object, text: str) -> None:
    box = page.locator("textarea:visible").last  # the chat input (its placeholder goes after one message)
    box.fill(text)
    box.press("Enter")


def test_chat_marks_each_failed_turn_in_place_and_takes_the_next_message(browser: object, chat_app: AppServer) -> None:
    page = open_page(browser, chat_app.url, DESKTOP)
    replies = page.locator(".message-wrap").get_by_text("tokens/s")
    failures = page.locator(".message-wrap").get_by_text("Not answered:")
    send(page, "first question")
    replies.first.wait_for(timeout=SLOW)

    # 1. A message over the server's limit
    send(page, "x" * 12_500)
    failures.nth(0).wait_for(timeout=SLOW)
    assert "message is 12,500 characters" in failures.nth(0).inner_text()

    # 2. A reply that cannot fit the context: the slider stops at the context, and even that is too long
    page.get_by_role("button", name="Settings").first.click()
    reply_length = page.get_by_label("number input for Max new tokens")
    assert reply_length.get_attribute("max") == "2048", "max new tokens goes past the tiny model's context"
    reply_length.fill("2048")
    reply_length.press("Enter")
    send(page, "second question")
    failures.nth(1).wait_for(timeout=SLOW)
    assert "context is 2048 tokens" in failures.nth(1).inner_text()
    reply_length.fill("16")
    reply_length.press("Enter")

    # 3. A model that fails to load
    page.get_by_label("Model").first.click()
    page.get_by_role("option", name="Absent Model").click()
    send(page, "third question")
    failures.nth(2).wait_for(timeout=SLOW)
    assert "not in the local Hugging Face cache" in failures.nth(2).inner_text()

    # The next message is answered at once, without a reload, below everything said before
    page.get_by_label("Model").first.click()
    page.get_by_role("option", name="Tiny Llama").click()
    answered = replies.count()  # each reply's speed note shows "tokens/s" in its title and in its body
    send(page, "fourth question")
    replies.nth(answered).wait_for(timeout=SLOW)
    conversation = page.locator(".message-wrap").inner_text()
    missing = [q for q in ("first question", "second question", "third question", "fourth question") if q not in conversation]
    assert not missing, f"{missing} are gone from the conversation: {conversation[-600:]!r}"
    assert failures.count() == 3
    page.close()


# -- Results in view: output beside the controls on a laptop, right under Generate on a phone --------

RUNS = {  # tab -> (what to fill, the run button, what marks the finished result inside the output)
    "image": ("Prompt", "Generate", "#image-output .thumbnails img, #image-output img"),
    "music": ("Prompt (one per line", "Generate", '#music-output audio[src]'),
    "pointcloud": ("Prompt", "Generate", "#pointcloud-output canvas"),
}


def inside_viewport(page: object, selector: str, timeout: float = 5_000) -> bool:
    """Whether the element's top 200 px come into the viewport within `timeout` ms (the page scrolls it
    there when a run starts, which may land a moment after the first result appears)."""
    script = """selector => {
        const box = document.querySelector(selector)?.getBoundingClientRect();
        return !!box && box.top < innerHeight && box.top + Math.min(box.height, 200) > 0;
    }"""
    try:
        page.wait_for_function(script, arg=selector, timeout=timeout)
    except playwright_api.TimeoutError:
        return False
    return True


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
@pytest.mark.parametrize("tab", sorted(RUNS))
def test_the_result_appears_in_view(browser: object, tiny_app: AppServer, tab: str, viewport: dict[str, int]) -> None:
    page = open_page(browser, tiny_app.url, viewport)
    open_tab(page, tab)
    field, button, result = RUNS[tab]
    panel = page.get_by_role("tabpanel")  # the open tab: the others' controls are hidden
    panel.get_by_label(field).first.fill("a quiet morning")
    if tab == "music":
        panel.get_by_label("number input for Duration (s)").fill("1")
    panel.get_by_role("button", name=button, exact=True).click()
    page.locator(result).first.wait_for(timeout=SLOW)
    assert inside_viewport(page, f"#{tab}-output"), f"{tab}'s output is out of view after {button}"
    assert page.locator(result).first.is_visible()
    page.close()


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_caption_previews_the_upload_and_its_result_is_in_view(
    browser: object, tiny_app: AppServer, viewport: dict[str, int], tmp_path: Path
) -> None:
    picture = tmp_path / "gradient.png"
    Image.linear_gradient("L").convert("RGB").save(picture)
    page = open_page(browser, tiny_app.url, viewport)
    open_tab(page, "caption")
    page.locator('#caption-output img').wait_for(state="detached")
    page.locator('#caption-upload input[type="file"]').set_input_files(str(picture))
    page.locator("#caption-output img").first.wait_for(timeout=SLOW)  # the preview, before any run
    page.get_by_role("button", name="Caption", exact=True).click()
    page.get_by_text("tokens/s").first.wait_for(timeout=SLOW)
    assert inside_viewport(page, "#caption-output"), "the caption is out of view"
    assert page.locator("#caption-output").get_by_role("button", name="Copy").count() == 1, "no copy button"
    page.close()


# -- Errors in place: the message stays beside the output, earlier results stay, no "Error" pills ----


def test_an_image_error_stays_in_the_status_line_and_keeps_the_result(browser: object, tiny_app: AppServer) -> None:
    page = open_page(browser, tiny_app.url, DESKTOP)
    open_tab(page, "image")
    prompt = page.get_by_label("Prompt").first
    prompt.fill("a lighthouse")
    prompt.press("Enter")  # Enter in the one-line prompt generates
    output = page.locator("#image-output")
    output.get_by_text("Done in").wait_for(timeout=SLOW)
    prompt.fill("")
    page.get_by_role("button", name="Generate", exact=True).click()
    output.get_by_text("Not done: prompt is empty").wait_for(timeout=SLOW)
    assert output.locator("img").first.is_visible(), "the earlier image was wiped by the error"
    assert page.get_by_text("Error", exact=True).count() == 0, "an 'Error' pill sits over the page"
    page.close()


# -- Stop is a result: the status line says where the run stopped, and nothing earlier passes for it ----

STOPS = {  # tab -> (the run's length setting: short, longest; the live status; the stopped status)
    "image": ("Steps", "1", "150", "Denoising: step", "Stopped at step"),
    "music": ("Duration (s)", "1", "30", "Generating:", "Stopped after"),
    "pointcloud": ("Steps per stage", "1", "256", "Stage 1 of 2", "Stopped at step"),
}


def served_files(output: object) -> set[str]:
    """The files an output area shows or offers (Gradio serves each as /gradio_api/file=PATH)."""
    return set(re.findall(r"/gradio_api/file=([^\"'&?]+)", output.inner_html()))


def set_number(panel: object, label: str, value: str) -> None:
    box = panel.get_by_label(f"number input for {label}")
    box.fill(value)
    box.press("Enter")


@pytest.mark.parametrize("tab", sorted(STOPS))
def test_stop_is_a_result(browser: object, tiny_app: AppServer, tab: str) -> None:
    setting, short, longest, live, stopped = STOPS[tab]
    page = open_page(browser, tiny_app.url, DESKTOP)
    open_tab(page, tab)
    panel = page.get_by_role("tabpanel")  # the open tab: the others' controls are hidden
    output = page.locator(f"#{tab}-output")
    run = panel.get_by_role("button", name="Generate", exact=True)
    stop = panel.get_by_role("button", name="Stop", exact=True)
    panel.get_by_label("Prompt").first.fill("a slow crescendo")
    assert stop.is_disabled(), "Stop is enabled with no run live"

    # A finished run first: its files must not come back as the stopped run's
    set_number(panel, setting, short)
    run.click()
    output.get_by_text("Done").first.wait_for(timeout=SLOW)
    earlier = served_files(output)
    assert earlier, f"the finished {tab} run shows no file"
    page.wait_for_function("button => button.disabled", arg=stop.element_handle(), timeout=SLOW)

    set_number(panel, setting, longest)
    if tab == "pointcloud":  # 256 tiny steps a stage can end within a second: a mesh makes the run long enough
        panel.get_by_label("Make a mesh").check()
        set_number(panel, "Mesh grid (samples per axis)", "256")
    panel.get_by_role("button", name="Generate", exact=True).click()
    output.get_by_text(live).first.wait_for(timeout=SLOW)
    assert stop.is_enabled(), "Stop is disabled while a run is live"
    label = panel.get_by_role("button", name="Generating…").inner_text()
    assert re.search(r"\d+(\.\d+)?( s)? of \d+", label), f"the run button does not count: {label!r}"

    started = time.monotonic()
    stop.click()
    output.get_by_text(stopped).first.wait_for(timeout=SLOW)
    stopped_after = time.monotonic() - started
    assert output.get_by_text(re.compile("^" + re.escape(live))).count() == 0, "the live status stayed after Stop"
    assert output.get_by_text("Done").count() == 0
    page.wait_for_function("button => button.disabled", arg=stop.element_handle(), timeout=SLOW)
    assert run.is_visible(), "the run button still says Generating… after Stop"
    shown = served_files(output)
    assert not shown & earlier, f"the earlier run's {sorted(shown & earlier)} reappeared after Stop"

    if tab == "music":  # the audio made so far is the result: a playable, downloadable clip, at once
        assert stopped_after < 2, f"Music took {stopped_after:.1f} s to stop"
        clip = output.locator(".music-player a[href]").first.get_attribute("href")
        assert clip and clip.endswith(".wav") and clip.split("file=")[1] in shown
        seconds = page.evaluate(PLAYABLE, clip)
        assert 0 < seconds < 30, f"the stopped clip plays {seconds} s"
    page.close()


#: Load a file into a new <audio> element: its duration in seconds, or -1 when it cannot play.
PLAYABLE = """src => new Promise(done => {
    const audio = new Audio(src);
    audio.onloadedmetadata = () => done(audio.duration);
    audio.onerror = () => done(-1);
})"""

"""History and examples: Re-run repeats a result byte for byte, each browser keeps its own history across
reloads, a removed file is said to be removed, and every example of every tab runs.

The browser tests drive headless Chromium (test_ui.browser) against the session's `--tiny` server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

import gradio as gr

from modules.tabs import caption, image, music, points3d
from modules.tabs.chat import restored_conversation
from modules.tabs.common import example_file
from modules.tabs.history import Made, entries_of, existing_file, recorder, served_roots
from tests.conftest import AppServer
from tests.test_page import open_tab

SLOW = 120_000  # ms: a tiny model on two shared cores; generous, never a speed target
#: tab -> (its first example, its folder under --outputs, the suffix of the file compared, its random-seed
#: box, what else a short run fills)
RERUNS = {
    "image": (image.EXAMPLE_PROMPTS[0], "images", ".png", "Randomise seed", {}),
    "music": (music.EXAMPLES[0][0], "music", ".wav", "New random seed each time", {"number input for Duration (s)": "1"}),
}
DONE = {"image": "Done in", "music": "Done:"}


def open_on(open_page: object, server: AppServer, tab_id: str) -> object:
    """A page of `server` in a browser of its own, on the tab `tab_id`."""
    page = open_page(server.url)
    page.get_by_role("tab").first.wait_for(timeout=30_000)
    open_tab(page, tab_id)
    return page


def made_files(server: AppServer, folder: str, suffix: str) -> set[Path]:
    return set((server.outputs / folder).glob(f"*{suffix}"))


def generate(page: object, tab: str, fills: dict[str, str]) -> None:
    """Press the tab's Generate (after `fills`: label -> value) and wait for a new finished result."""
    output = page.locator(f"#{tab}-output")
    done = output.get_by_text(DONE[tab])
    # The last run's status line, if any; a quick run may replace it in place, without it ever going.
    before = done.first.inner_text() if done.count() else None
    for label, value in fills.items():
        page.get_by_label(label).fill(value)
        page.get_by_label(label).press("Enter")
    page.get_by_role("button", name="Generate", exact=True).click()
    if before is None:
        done.wait_for(timeout=SLOW)
    else:  # its timings differ from the last run's
        done.filter(has_not_text=before).wait_for(timeout=SLOW)


def history_entries(page: object) -> object:
    open_tab(page, "history")
    return page.locator(".history-entry")


@pytest.fixture(scope="module")
def open_page() -> Iterator[object]:
    from tests.test_ui import browser  # skips where Playwright is not installed

    with browser() as open_page:
        yield open_page


@pytest.fixture(scope="module")
def expect(open_page: object) -> object:
    from tests.test_ui import playwright_api

    return playwright_api.expect


@pytest.mark.parametrize("tab", sorted(RERUNS))
def test_rerun_of_an_entry_makes_a_byte_identical_file(
    open_page: object, expect: object, tiny_app: AppServer, tab: str
) -> None:
    example, folder, suffix, random_seed, fills = RERUNS[tab]
    page = open_on(open_page, tiny_app, tab)
    panel = page.get_by_role("tabpanel")  # only the open tab's panel is on the page
    panel.get_by_text(example).first.click()
    expect(panel.get_by_label("Prompt").first).to_have_value(example)  # the example fills the prompt
    expect(panel.get_by_label(random_seed)).to_be_checked()
    before = made_files(tiny_app, folder, suffix)
    generate(page, tab, fills)  # with a random seed
    (first,) = made_files(tiny_app, folder, suffix) - before

    entries = history_entries(page)
    made = entries.filter(has_text=example).first  # this run's entry (it is recorded as the run ends)
    made.wait_for(timeout=SLOW)
    count = entries.count()
    made.get_by_role("button", name="Re-run").click()  # once: a click never falls between two drawings
    expect(page.locator(f'[role="tab"][data-tab-id="{tab}"]')).to_have_attribute("aria-selected", "true", timeout=SLOW)
    expect(panel.get_by_label(random_seed)).not_to_be_checked()  # the seed is the one used
    expect(panel.get_by_label("Prompt").first).to_have_value(example)
    before = made_files(tiny_app, folder, suffix)
    generate(page, tab, {})
    (second,) = made_files(tiny_app, folder, suffix) - before

    assert second != first and second.read_bytes() == first.read_bytes()
    entries = history_entries(page)
    entries.nth(count).wait_for(timeout=SLOW)  # the re-run is an entry of its own, on top
    page.close()


def test_history_survives_a_reload_and_stays_in_its_own_browser(
    open_page: object, expect: object, tiny_app: AppServer
) -> None:
    page = open_on(open_page, tiny_app, "image")
    prompt = "a history test, lighthouse"
    page.get_by_label("Prompt").first.fill(prompt)
    generate(page, "image", {})
    entries = history_entries(page)
    entries.filter(has_text=prompt).wait_for(timeout=SLOW)

    other = open_on(open_page, tiny_app, "history")  # a fresh context: its own localStorage, as another person's
    other.get_by_text("Nothing yet").wait_for(timeout=SLOW)
    expect(other.locator(".history-entry"), "another browser sees this browser's history").to_have_count(0)

    page.reload()
    page.get_by_role("tab").first.wait_for(timeout=30_000)
    entry = history_entries(page).filter(has_text=prompt)
    entry.wait_for(timeout=SLOW)
    # The entry's parts are mounted one after another as the list is drawn: wait for each.
    expect(entry.locator("img"), "the entry lost its preview").to_have_count(1)
    expect(entry.get_by_role("button", name="Download PNG")).to_have_count(1)
    other.reload()
    other.get_by_role("tab").first.wait_for(timeout=30_000)
    open_tab(other, "history")
    other.get_by_text("Nothing yet").wait_for(timeout=SLOW)
    other.close()
    page.close()


def send(page: object, text: str) -> None:
    """Send a chat message (the input takes it once the last reply is through)."""
    box = page.get_by_role("tabpanel").locator("textarea:visible").last  # its placeholder goes after one message
    box.fill(text)
    box.press("Enter")


def chat_entries(page: object) -> object:
    return history_entries(page).filter(has_text="Chat ·")


def transcript(entry: object) -> str:
    """The text of the transcript an entry's download button gives."""
    with entry.page.expect_download(timeout=SLOW) as download:
        entry.get_by_role("button", name="Download MD").click()
    return Path(download.value.path()).read_text()


def test_a_conversation_is_one_entry_that_continues_after_a_reload(
    open_page: object, expect: object, tiny_app: AppServer
) -> None:
    page = open_on(open_page, tiny_app, "chat")
    panel = page.get_by_role("tabpanel")
    panel.get_by_text("Settings").click()
    panel.get_by_label("System prompt").fill("You answer in rhyme.")
    send(page, "history chat, first message")
    entry = chat_entries(page)
    # Recorded once the reply is through (not per streamed token), with its speed and a transcript.
    entry.filter(has_text="1 turn ·").wait_for(timeout=SLOW)
    expect(entry.get_by_text("system_prompt You answer in rhyme.")).to_have_count(1)
    expect(entry.get_by_text("tokens/s")).to_have_count(1)
    expect(entry.get_by_text("“history chat, first message”")).to_have_count(1)
    expect(entry.get_by_role("button", name="Download MD")).to_have_count(1)

    open_tab(page, "chat")
    send(page, "history chat, second message")
    entry = chat_entries(page)
    entry.filter(has_text="2 turns ·").wait_for(timeout=SLOW)
    expect(chat_entries(page), "a turn added an entry instead of updating its conversation's").to_have_count(1)
    text = transcript(entry)
    assert "## User\n\nhistory chat, first message" in text and "## User\n\nhistory chat, second message" in text
    assert text.count("## Assistant") == 2 and "Tiny Llama" in text

    other = open_on(open_page, tiny_app, "history")  # another browser: its own history
    other.get_by_text("Nothing yet").wait_for(timeout=SLOW)
    other.close()

    page.reload()
    page.get_by_role("tab").first.wait_for(timeout=30_000)
    entry = chat_entries(page)
    entry.get_by_role("button", name="Continue").click()
    chat_tab = page.locator('[role="tab"][data-tab-id="chat"]')
    expect(chat_tab).to_have_attribute("aria-selected", "true", timeout=SLOW)
    panel = page.get_by_role("tabpanel")
    expect(panel.get_by_text("history chat, second message")).to_have_count(1)
    panel.get_by_text("Settings").click()
    expect(panel.get_by_label("System prompt")).to_have_value("You answer in rhyme.")  # the settings come back too
    send(page, "history chat, third message")
    # Three turns in the one entry: the model got the restored conversation, not a fresh one.
    entry = chat_entries(page)
    entry.filter(has_text="3 turns ·").wait_for(timeout=SLOW)
    expect(chat_entries(page)).to_have_count(1)
    assert "## User\n\nhistory chat, first message" in transcript(entry)

    open_tab(page, "chat")
    panel.get_by_role("button", name="Clear").click()
    send(page, "history chat, a new conversation")
    chat_entries(page).filter(has_text="a new conversation").wait_for(timeout=SLOW)
    expect(chat_entries(page), "a conversation after Clear is an entry of its own").to_have_count(2)
    page.close()


def test_an_entry_whose_files_are_gone_says_so(open_page: object, expect: object, tiny_app: AppServer) -> None:
    page = open_on(open_page, tiny_app, "pointcloud")
    page.get_by_label("Prompt").first.fill("a history test, a cone")
    page.get_by_role("button", name="Generate", exact=True).click()
    entry = history_entries(page).filter(has_text="a history test, a cone")
    entry.wait_for(timeout=SLOW)
    # The output folder's housekeeping removes files; here every copy of this run's files goes.
    stems = {Path(url.split("file=")[-1]).stem for url in entry.locator("a[href*='file=']").evaluate_all(
        "links => links.map(link => link.href)")}  # fmt: skip
    assert stems, "the entry offers no files"
    for path in tiny_app.outputs.rglob("*"):
        if path.is_file() and path.stem in stems:
            path.unlink()
    page.reload()
    page.get_by_role("tab").first.wait_for(timeout=30_000)
    entry = history_entries(page).filter(has_text="a history test, a cone")
    entry.get_by_text("no longer on the server").wait_for(timeout=SLOW)
    expect(entry.get_by_role("button", name="Re-run")).to_have_count(1)
    page.close()


def test_only_files_the_server_serves_anyway_are_shown(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    made = outputs / "made.png"
    made.write_bytes(b"png")
    roots = served_roots(outputs)
    assert existing_file(str(made), roots) == str(made.resolve())
    assert existing_file(str(outputs / "gone.png"), roots) is None
    secret = tmp_path / "secret.txt"  # beside the output folder, as /etc/passwd would be
    secret.write_text("no")
    assert existing_file(str(secret), roots) is None
    assert existing_file(str(outputs / ".." / "secret.txt"), roots) is None
    assert existing_file(example_file("red-ball.png"), roots)


def test_entries_of_another_shape_are_left_out() -> None:
    """The list comes from the browser's storage, which anyone can edit: odd entries are dropped, not shown."""
    good = {"id": "0" * 32, "task": "image", "time": 1.0, "settings": {"prompt": "x"}, "files": ["/x.png"]}
    odd = [None, "text", {**good, "time": "noon"}, {**good, "files": "/x.png"}, {k: v for k, v in good.items() if k != "id"}]
    odd.append({**good, "id": "x' + alert(1) + '"})  # an id goes into Re-run's script: hex only
    assert entries_of([good, *odd]) == [good]
    assert entries_of({"not": "a list"}) == []


def test_runs_that_name_one_entry_update_it_and_other_runs_add_their_own() -> None:
    made = Made([], {"prompt": gr.Textbox()}, files=gr.State(), stats=gr.State(), text=gr.State(), entry_id=gr.State())
    record = recorder("chat", made)
    key = "a" * 32
    first = record([], "hi", "/out/1.md", "1 turn", "hello", key)
    grown = record(first, "hi", "/out/2.md", "2 turns", "again", key)
    assert [(entry["id"], entry["stats"], entry["files"]) for entry in grown] == [(key, "2 turns", ["/out/2.md"])]
    other = record(grown, "new", "/out/3.md", "1 turn", "fresh", None)  # after Clear: no id yet
    assert len(other) == 2 and other[0]["id"] != key and other[1] == grown[0]
    assert record(other, "hi", "/out/2.md", "2 turns", "again", key) == gr.skip()  # continued, nothing new


def test_a_stored_conversation_comes_back_as_text_only() -> None:
    """Continue fills the chat from the browser's storage: a file message there must not make the server
    serve that file, and only user and assistant turns come back."""
    stored = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "file", "file": {"path": "/etc/passwd"}}], "metadata": {"title": "9 tokens/s", "status": "done"}},
        {"role": "system", "content": "a system turn"},
        "junk",
        {"role": "assistant", "content": "ok", "metadata": "not a dict"},
    ]  # fmt: skip
    assert restored_conversation(stored) == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": ""}], "metadata": {"title": "9 tokens/s"}},
        {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
    ]
    assert restored_conversation({"not": "a list"}) == []


# -- Every example runs -----------------------------------------------------------------------------


def examples() -> Iterator[tuple[str, tuple, dict]]:
    """(endpoint, main input, settings) for every example the tabs offer, as a click then Generate runs it."""
    for prompt in image.EXAMPLE_PROMPTS:
        yield "/generate_image", (prompt,), {}
    for prompt, _seconds in music.EXAMPLES:
        # 1 s, not the example's 8-10 s: a tiny MusicGen takes over a minute for those on shared cores,
        # and the duration is the slider's (capped to the server's limit when the tab is built).
        yield "/generate_music", (prompt,), {"duration": 1}
    for prompt in points3d.EXAMPLE_PROMPTS:
        yield "/generate_3d", (prompt,), {}
    for name in points3d.EXAMPLE_IMAGES:
        yield "/generate_3d_from_image", (handle_file(example_file(name)),), {}
    for name, opening in caption.EXAMPLES:
        yield "/caption", (handle_file(example_file(name)),), {"prefix": opening}


@pytest.mark.parametrize(("endpoint", "main", "settings"), list(examples()))
def test_every_example_runs(tiny_client: Client, endpoint: str, main: tuple, settings: dict) -> None:
    result = tiny_client.predict(*main, **settings, api_name=endpoint)
    stats = result[-1] if endpoint != "/generate_music" else result[1]
    made = [value for value in result if value]
    assert made and stats, f"{endpoint} gave no result for {main}: {result}"

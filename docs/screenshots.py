"""Screenshots for the README: the real app on --tiny, every tab with one result, as a person sees it.

    python docs/screenshots.py            # or: make screenshots
    python docs/screenshots.py --url URL  # of an app on --tiny that is already serving

Drives headless Chromium with the tests' own Playwright code (tests/test_ui.py, tests/test_page.py) at
desktop width (1366x900) and, for the Image tab, at phone width (390x844), and writes PNGs (256 colours,
to stay small) into docs/. Outputs are noise: the tiny models have random weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

from tests.conftest import AppServer  # noqa: E402
from tests.test_page import DESKTOP, PHONE, SLOW, open_tab, set_number  # noqa: E402
from tests.test_ui import browser  # noqa: E402


def save(page: object, name: str) -> None:
    path = DOCS / f"screenshot-{name}.png"
    page.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"{path.relative_to(DOCS.parent)}: {path.stat().st_size // 1024} KB")


def chat(page: object, picture: Path) -> None:
    box = page.get_by_placeholder("Type a message...")
    box.fill("Write a haiku about a lighthouse.")
    box.press("Enter")
    page.locator(".message-wrap").get_by_text("tokens/s").first.wait_for(timeout=SLOW)


def image(page: object, picture: Path) -> None:
    panel = page.get_by_role("tabpanel")
    panel.get_by_label("Prompt").first.fill("a lighthouse on a cliff at dusk, watercolour")
    panel.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#image-output").get_by_text("Done in").wait_for(timeout=SLOW)


def caption(page: object, picture: Path) -> None:
    page.locator('#caption-upload input[type="file"]').set_input_files(str(picture))
    page.get_by_role("button", name="Caption", exact=True).click()
    page.locator("#caption-output").get_by_text("tokens/s").first.wait_for(timeout=SLOW)


def music(page: object, picture: Path) -> None:
    panel = page.get_by_role("tabpanel")
    panel.get_by_label("Prompt").first.fill("lo-fi hip hop beat with warm piano chords")
    set_number(panel, "Duration (s)", "5")
    panel.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#music-output").get_by_text("Done:").wait_for(timeout=SLOW)


def points3d(page: object, picture: Path) -> None:
    panel = page.get_by_role("tabpanel")
    panel.get_by_label("Prompt").first.fill("a red motorcycle")
    panel.get_by_role("button", name="Generate", exact=True).click()
    page.locator("#pointcloud-output").get_by_text("Done in").first.wait_for(timeout=SLOW)
    page.wait_for_timeout(2000)  # the viewer draws the cloud after the file arrives (WebGL)


def history(page: object, picture: Path) -> None:
    page.locator(".history-entry").first.wait_for(timeout=SLOW)  # the runs above are its entries


def system(page: object, picture: Path) -> None:
    page.locator("span.text", has_text="on device").first.wait_for(timeout=SLOW)  # the runs above loaded them


TABS = {
    "chat": chat, "image": image, "caption": caption, "music": music, "pointcloud": points3d, "history": history,
    "system": system,
}  # fmt: skip


def take(url: str, workdir: Path) -> None:
    with browser() as open_page:
        picture = workdir / "gradient.png"
        Image.linear_gradient("L").convert("RGB").resize((512, 512)).save(picture)
        page = open_page(url, height=DESKTOP["height"])
        page.set_viewport_size(DESKTOP)
        page.get_by_role("tab").first.wait_for(timeout=30_000)
        for tab, make_result in TABS.items():
            open_tab(page, tab)
            make_result(page, picture)
            page.evaluate("window.scrollTo(0, 0)")
            save(page, tab)
        phone = open_page(url, height=PHONE["height"])
        phone.set_viewport_size(PHONE)
        phone.get_by_role("tab").first.wait_for(timeout=30_000)
        open_tab(phone, "image")
        image(phone, picture)  # the run scrolls its result into view
        phone.wait_for_timeout(1000)
        save(phone, "phone-image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an app on --tiny that is already serving (default: start one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        if args.url:
            take(args.url, Path(workdir))
        else:
            with AppServer(["--tiny"], Path(workdir)) as server:
                take(server.url, Path(workdir))


if __name__ == "__main__":
    main()

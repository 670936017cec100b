"""What idle pages cost the server: its CPU while 30 pages sit open, measured in one run.

Starts the app on --tiny, opens N pages (one Playwright browser context each, so N separate sessions),
waits until each page has rendered, then samples the server process's CPU time over a window:
(a) with no page open, (b) with every page idle on the Chat tab (the first one), (c) with every page on
the System tab, whose status refresh ticks every 2 s while it is open. Prints CPU% of one core and the
ratios, from this one run; no thresholds.

Run: .venv/bin/python bench/idle_pages.py [--pages 30] [--seconds 20]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import AppServer  # noqa: E402
from tests.test_ui import CHROMIUM_FLAGS  # noqa: E402


def cpu_percent(process: psutil.Process, seconds: float) -> float:
    """CPU time the process (and its threads) used over `seconds`, as % of one core."""
    before = process.cpu_times()
    started = time.monotonic()
    time.sleep(seconds)
    after = process.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100 * used / (time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory() as workdir, AppServer(["--tiny"], Path(workdir)) as server:
        process = psutil.Process(server.process.pid)
        alone = cpu_percent(process, args.seconds)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            pages = []
            for _ in range(args.pages):
                page = browser.new_context().new_page()
                page.goto(server.url)
                page.get_by_role("tab", name="System").wait_for(timeout=300_000)
                pages.append(page)
            time.sleep(2)  # let the last page's load events finish before measuring
            on_chat = cpu_percent(process, args.seconds)
            for page in pages:
                page.get_by_role("tab", name="System").click()
            on_system = cpu_percent(process, args.seconds)
            browser.close()
    print(f"server CPU over {args.seconds:g} s, % of one core (one run):")
    print(f"  no page open:                      {alone:6.2f} %")
    print(f"  {args.pages} pages idle on the Chat tab:     {on_chat:6.2f} %")
    print(f"  {args.pages} pages on the System tab (2 s refresh): {on_system:6.2f} %")
    print(f"  ratio idle pages / no page: {on_chat / alone if alone else float('inf'):.2f}")
    print(f"  ratio System tab open / idle pages: {on_system / on_chat if on_chat else float('inf'):.2f}")


if __name__ == "__main__":
    main()

"""Music in the browser: time from Generate to the finished players in Chromium, against the same request
through gradio_client, in one run.

    python bench/music_browser.py [--duration 10] [--runs 3]

Starts the app on --tiny. The browser side clicks Generate on the Music tab (Playwright, Debian's
Chromium, as the tests drive it) and stops the clock when the first prompt's finished player offers this
run's WAV and the status line says Done. The client side is bench/music.py's request: the same prompt,
seed and settings through gradio_client, timed from submit to the final result. Runs alternate; medians
are compared. Prints the ratio client time / browser time (1: the page is as fast as a script; target
>= 0.8), and the server's own generation time in both kinds of run: when that is what grew, the page
slowed the server (the browser shares its cores); when it did not, the page waited after the server
was done.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradio_client import Client  # noqa: E402

from bench.music import PROMPT, app_request, app_seconds  # noqa: E402
from tests.conftest import AppServer  # noqa: E402
from tests.test_page import DESKTOP, open_tab  # noqa: E402
from tests.test_ui import browser  # noqa: E402

#: The first prompt's finished player (its download link names this run's WAV) and the status line.
FINISHED = """previous => {
    const link = document.querySelector('#music-output .music-player a[href]');
    return !!link && link.href !== previous && document.querySelector('#music-output').innerText.includes('Done:');
}"""
PLAYER_FILE = "document.querySelector('#music-output .music-player a[href]')?.href ?? null"


def browser_seconds(page: object, duration: float, seed: int) -> tuple[float, float]:
    """Seconds from the click to the finished player, and the server's own generation time (its status
    line), so the gap is what the page adds."""
    page.get_by_label("number input for Duration (s)").fill(f"{duration:g}")
    page.get_by_label("number input for Duration (s)").press("Enter")
    page.get_by_label("Seed", exact=True).fill(str(seed))
    page.get_by_label("Seed", exact=True).press("Enter")
    previous = page.evaluate(PLAYER_FILE)  # the clock stops at this run's file, not the previous one's
    started = time.perf_counter()
    page.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_function(FINISHED, arg=previous, timeout=600_000, polling=20)
    elapsed = time.perf_counter() - started
    generated = generation_seconds(page.locator("#music-output").inner_text())
    # The live clip would play on for seconds (it is made faster than it plays) and slow the next client run.
    page.evaluate("document.querySelectorAll('audio').forEach(audio => audio.pause())")
    return elapsed, generated


def generation_seconds(status: str) -> float:
    """The server's own generation time, from a finished run's status line."""
    generated = re.search(r"Done: [\d.]+ s of audio in ([\d.]+) s", status)
    return float(generated.group(1)) if generated else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, AppServer(["--tiny"], Path(workdir)) as server, browser() as open_page:
        client = Client(server.url, verbose=False, download_files=False)
        app_seconds(client, 1.0, 0)  # load the model before timing
        page = open_page(server.url, height=DESKTOP["height"])
        page.get_by_role("tab").first.wait_for(timeout=30_000)
        open_tab(page, "music")
        page.get_by_label("Prompt").first.fill(PROMPT)
        page.get_by_label("New random seed each time").uncheck()
        browser_seconds(page, 1.0, 0)  # nor the page's first run (its first live stream and players)
        in_browser, in_client, generating, generating_for_client = [], [], [], []
        for run in range(args.runs):
            seconds, result = app_request(client, args.duration, run)
            in_client.append(seconds)
            generating_for_client.append(generation_seconds(result[1]))
            seconds, generated = browser_seconds(page, args.duration, run)
            in_browser.append(seconds)
            generating.append(generated)
            print(
                f"run {run + 1}: gradio_client {in_client[-1]:.2f} s (server generated for "
                f"{generating_for_client[-1]:.2f} s), browser {seconds:.2f} s (server generated for {generated:.2f} s)",
                flush=True,
            )
    client_median, browser_median = statistics.median(in_client), statistics.median(in_browser)
    print(f"{args.duration:g} s of audio, tiny MusicGen, median of {args.runs}")
    print(f"gradio_client: {client_median:.2f} s to the final result")
    print(f"Chromium: {browser_median:.2f} s from Generate to the finished player")
    print(
        f"the server's own generation: {statistics.median(generating_for_client):.2f} s for gradio_client, "
        f"{statistics.median(generating):.2f} s for Chromium"
    )
    print(f"ratio client / browser: {client_median / browser_median:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()

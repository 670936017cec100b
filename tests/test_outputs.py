"""The output folder stays within its size and age caps, oldest first, never touching recent files."""

from __future__ import annotations

import os
import time
from pathlib import Path

from gradio_client import Client

from modules.outputs import OutputLimits, sweep
from tests.conftest import AppServer
from tests.test_music import music

NOW = 1_000_000_000.0
HOUR = 3600.0
LIMITS = OutputLimits(max_bytes=1000, max_age_seconds=24 * HOUR, keep_seconds=0.5 * HOUR)


def make(folder: Path, name: str, size: int, hours_old: float, now: float = NOW) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (now - hours_old * HOUR, now - hours_old * HOUR))
    return path


def remaining(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def test_files_past_the_age_limit_go_even_when_the_folder_fits(tmp_path: Path) -> None:
    make(tmp_path, "images/old.png", 10, hours_old=25)
    make(tmp_path, "images/young.png", 10, hours_old=23)
    swept = sweep(tmp_path, LIMITS, now=NOW)
    assert remaining(tmp_path) == {"images/young.png"}
    assert (swept.removed, swept.freed_bytes, swept.kept_bytes) == (1, 10, 10)


def test_over_the_size_cap_the_oldest_go_first_until_it_fits(tmp_path: Path) -> None:
    for hours, name in ((5, "a"), (4, "b"), (3, "c"), (2, "d")):
        make(tmp_path, f"music/{name}.wav", 400, hours_old=hours)
    sweep(tmp_path, LIMITS, now=NOW)
    assert remaining(tmp_path) == {"music/c.wav", "music/d.wav"}  # 800 bytes fit under 1000


def test_recent_files_stay_even_over_the_cap(tmp_path: Path) -> None:
    make(tmp_path, "images/older.png", 600, hours_old=1)
    make(tmp_path, "images/on-a-page.png", 600, hours_old=0.2)
    make(tmp_path, "images/just-made.png", 600, hours_old=0)
    sweep(tmp_path, LIMITS, now=NOW)
    assert remaining(tmp_path) == {"images/on-a-page.png", "images/just-made.png"}


def test_emptied_cache_folders_go_once_they_are_old_but_the_top_folders_stay(tmp_path: Path) -> None:
    now = time.time()  # folders' modification times are real: removing a file inside one touches it
    make(tmp_path, "gradio/3f2a/upload.png", 10, hours_old=30, now=now)
    (tmp_path / "gradio/just-made").mkdir()  # a folder Gradio may be about to write into
    sweep(tmp_path, LIMITS, now=now)
    assert remaining(tmp_path) == set()
    assert (tmp_path / "gradio/just-made").is_dir() and (tmp_path / "gradio/3f2a").is_dir()
    sweep(tmp_path, LIMITS, now=now + HOUR)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["gradio"]


def test_the_app_sweeps_its_output_folder_at_start_and_keeps_what_it_makes(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    now = time.time()
    make(outputs, "images/yesterday.png", 100, hours_old=30, now=now)
    make(outputs, "music/an-hour-ago.wav", 3000, hours_old=1, now=now)
    make(outputs, "music/recent.wav", 3000, hours_old=0.1, now=now)
    args = ["--tiny", "--outputs", str(outputs), "--outputs-max-size", "4KB", "--outputs-max-hours", "24"]
    with AppServer(args, tmp_path) as server:
        assert remaining(outputs) == {"music/recent.wav"}, "the start-up sweep kept an old file or lost a recent one"
        client = Client(server.url, verbose=False)
        music(client, "piano", duration=1).result(timeout=300)
        made = remaining(outputs) - {"music/recent.wav"}
        assert any(name.startswith("music/") and name.endswith(".wav") for name in made), made

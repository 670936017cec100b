"""Housekeeping for the output folder: capped by size and by age, the oldest files removed first.

A file a page may still be showing is never removed. Gradio does not tell the server which files an
open page shows, and a page can stay open long after its session's last event, so "showing" is defined
by age: every file written in the last `keep_seconds` (30 minutes by default) stays, even when the
folder is over its size cap. Past that, a person has had the time to download or copy what they wanted.

The sweep runs at start-up and then every few minutes in a daemon thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputLimits:
    max_bytes: int = 2 * 1024**3
    max_age_seconds: float = 24 * 3600
    keep_seconds: float = 30 * 60  # files this recent may be on someone's page: never removed


@dataclass(frozen=True)
class Swept:
    removed: int
    freed_bytes: int
    kept_bytes: int


def sweep(folder: Path, limits: OutputLimits, now: float | None = None) -> Swept:
    """Remove files older than the age limit, then the oldest until the folder fits its size cap."""
    now = time.time() if now is None else now
    files: list[tuple[float, int, Path]] = []  # (modified, size, path)
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                stat = path.stat()
                files.append((stat.st_mtime, stat.st_size, path))
        except OSError:  # removed meanwhile (e.g. by Gradio's own cache cleaning)
            continue
    files.sort()  # oldest first
    total = sum(size for _, size, _ in files)
    removed = freed = 0
    for modified, size, path in files:
        age = now - modified
        if age < limits.keep_seconds:
            break  # this one and every newer file may be on a page
        if age <= limits.max_age_seconds and total <= limits.max_bytes:
            break  # young enough, and the folder fits: the newer ones stay too
        try:
            path.unlink()
        except OSError:
            continue
        total -= size
        removed += 1
        freed += size
    _remove_empty_folders(folder, now - limits.keep_seconds)
    return Swept(removed, freed, total)


def _remove_empty_folders(folder: Path, older_than: float) -> None:
    """Empty folders below the top level (e.g. Gradio's per-file cache folders) that have not changed
    since `older_than`, so a folder just made for a file about to be written stays; the top level stays."""
    for root, _dirs, _files in os.walk(folder, topdown=False):
        path = Path(root)
        try:
            if path.parent != folder and path != folder and path.stat().st_mtime < older_than:
                path.rmdir()  # only succeeds when empty
        except OSError:
            pass


def start_housekeeping(folder: Path, limits: OutputLimits, every_seconds: float = 300.0) -> threading.Event:
    """Sweep now, then every `every_seconds` in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()

    def run_once() -> None:
        try:
            swept = sweep(folder, limits)
        except OSError as exc:
            log.warning("output folder sweep failed: %s", exc)
            return
        if swept.removed:
            log.info("removed %d old output files (%d bytes); %d bytes kept", swept.removed, swept.freed_bytes, swept.kept_bytes)

    def loop() -> None:
        while not stop.wait(every_seconds):
            run_once()

    run_once()
    threading.Thread(target=loop, name="atelier-housekeeping", daemon=True).start()
    return stop

"""The thread policy reaches the OpenMP runtime torch really loads, and a user's own choice wins.

libgomp prints the settings it runs with when OMP_DISPLAY_ENV=VERBOSE, at the moment it loads: that is
what the first test reads, in a fresh interpreter that imports the app and then torch, as the server does.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from modules.threads_policy import WAIT_SETTINGS, apply_thread_policy, compute_threads, glibc
from tests.conftest import ROOT


def openmp_settings(**env: str) -> dict[str, str]:
    """The settings libgomp reports after `import app` then torch's first parallel op, and under "environ"
    the OMP_WAIT_POLICY the process's environment holds ("" when unset)."""
    clean = {k: v for k, v in os.environ.items() if k not in WAIT_SETTINGS and k != "OMP_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", "import app, os, torch; torch.ones(4).sum(); print(os.environ.get('OMP_WAIT_POLICY', ''))"],
        cwd=ROOT,
        env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    settings = {"environ": done.stdout.strip()}
    for line in done.stderr.splitlines():
        name, sep, value = line.strip().partition(" = ")
        if sep:
            settings[name] = value.strip("'")
    assert "OMP_WAIT_POLICY" in settings, done.stderr[-2000:]
    return settings


def test_waiting_openmp_threads_sleep_by_default() -> None:
    settings = openmp_settings()
    assert settings["environ"] == settings["OMP_WAIT_POLICY"] == "PASSIVE"
    assert settings["GOMP_SPINCOUNT"] == "0"  # libgomp's own default spins 300000 times


@pytest.mark.parametrize("name, value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "300000"), ("KMP_BLOCKTIME", "200")])
def test_a_user_choice_of_how_threads_wait_is_kept(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    for setting in WAIT_SETTINGS:
        monkeypatch.delenv(setting, raising=False)
    monkeypatch.setenv(name, value)
    apply_thread_policy()
    assert {setting: os.environ.get(setting) for setting in WAIT_SETTINGS} == {
        setting: value if setting == name else None for setting in WAIT_SETTINGS
    }


def test_compute_threads_follows_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert compute_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert compute_threads() == len(os.sched_getaffinity(0))


@pytest.mark.skipif(glibc() is None, reason="malloc_trim is glibc's")
def test_memory_freed_by_a_request_goes_back_to_the_system() -> None:
    """glibc keeps freed heap pages; what a finished turn freed must leave the server's resident memory."""
    code = (
        "from modules.threads_policy import return_freed_memory\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 // 2**20\n"
        "blocks = [bytes(2048) for _ in range(100_000)]  # ~200 MB of malloc'd blocks, as activations are\n"
        "kept = blocks[::10]; del blocks  # the survivors pin the heap, so glibc's own trimming cannot\n"
        "before = rss(); return_freed_memory(); print(before, rss())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    before, after = map(int, done.stdout.split())
    assert before - after > 100, f"resident memory {before} MiB -> {after} MiB"

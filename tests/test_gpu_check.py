"""bench/gpu_check.py in its CPU mode: the prepared GPU check runs end to end here, so it is ready when a GPU is.

One run of the real script (tiny models built from scratch, the real catalogue loader, wrappers and memory
manager) as a subprocess; the tests read its JSON report. What only CUDA can measure must say so rather
than carry a number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"image", "music", "caption", "chat", "pointcloud"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("gpu-check")
    out = work / "report.json"
    command = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny", "--work", str(work), "--out", str(out)]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800, env=os.environ.copy())
    assert run.returncode == 0, f"gpu_check failed ({run.returncode}):\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}"
    assert "targets missed: none" in run.stdout
    return json.loads(out.read_text())


def rows(report: dict[str, Any], section: str) -> list[dict[str, Any]]:
    return report["sections"][section]["rows"]


def task_of(row: dict[str, Any]) -> str:
    return row["model"].split("/")[0]


def test_the_whole_check_ran_and_met_its_targets_without_gradio(report: dict[str, Any]) -> None:
    assert report["complete"] and report["targets_missed"] == []
    assert report["device"] == "cpu" and report["size"] == "tiny" and report["gpu"] is None
    assert set(report["sections"]) == {"accounting", "dtypes", "speed", "unchanged", "offload", "budget", "oom"}
    assert report["gradio_imported"] is False


def test_accounting_matches_the_saved_tensors_and_skips_what_only_cuda_measures(report: dict[str, Any]) -> None:
    accounting = rows(report, "accounting")
    assert {task_of(row) for row in accounting} == TASKS
    for row in accounting:
        assert row["measured_by"] == "files" and row["ok"] is True
        assert 0.95 <= row["ratio"] <= 1.05 and row["manager_bytes"] > 0
        assert row["allocated_delta_bytes"] is None and row["peak_working_bytes"] is None and row["working_ratio"] is None
        assert row["declared_working_bytes"] > 0


def test_every_model_runs_in_its_catalogue_dtype_with_finite_outputs(report: dict[str, Any]) -> None:
    for row in rows(report, "dtypes"):
        assert row["catalogue_dtype"] == row["weights_dtype"] == "float32"
        assert row["finite"] is True and row["ok"] is True


def test_speed_is_measured_for_every_wrapper_but_judged_only_on_cuda(report: dict[str, Any]) -> None:
    speed = rows(report, "speed")
    assert {task_of(row) for row in speed[:-1]} == TASKS
    assert speed[-1]["model"].startswith("point-e base step")
    for row in speed:
        assert row["raw_s"] > 0 and row["wrapper_s"] > 0 and row["ok"] is None


def test_nothing_moves_or_loads_when_nothing_changed(report: dict[str, Any]) -> None:
    [row] = rows(report, "unchanged")
    assert row["requests"] == 2 * len(TASKS) and row["moves"] == 0 and row["loads"] == 0


def test_offload_is_reported_as_not_applicable_on_cpu(report: dict[str, Any]) -> None:
    offload = rows(report, "offload")
    assert {task_of(row) for row in offload} == TASKS
    for row in offload:
        assert row["cold_load_s"] > 0 and row["back_s"] is None and row["ratio"] is None and row["ok"] is None
    assert any("offload timing is CUDA only" in note for note in report["sections"]["offload"]["notes"])


def test_eight_threads_under_a_small_budget_evict_and_never_exceed_it(report: dict[str, Any]) -> None:
    [row] = rows(report, "budget")
    assert row["errors"] == [] and row["evictions"] > 0 and row["requests"] >= 8
    assert row["manager_peak_bytes"] <= row["budget_bytes"]
    assert row["device_peak_bytes"] is None and row["ok"] is True


def test_a_real_allocation_failure_ends_in_a_clear_message_and_consistent_accounting(report: dict[str, Any]) -> None:
    retry, hopeless, afterwards = rows(report, "oom")
    assert retry["outcome"] == "skipped" and "CUDA only" in retry["detail"] and retry["ok"] is None
    assert hopeless["outcome"] == "DeviceOutOfMemory" and hopeless["attempts"] == 2 and hopeless["ok"] is True
    assert "ran out of memory running caption/" in hopeless["detail"]
    assert afterwards["ok"] is True and "pins 0" in afterwards["outcome"]

"""System tab: the device, the budget, and every model's live state with an Unload button each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr

from modules.memory import MemoryManager, format_bytes
from modules.tabs.common import user_errors

COLUMNS = ["model", "key", "state", "size", "in use", "last load (s)", "loads"]


def status_rows(manager: MemoryManager, labels: Mapping[str, str]) -> list[list[Any]]:
    return [
        [
            labels.get(s.key, s.key),
            s.key,
            s.state.value,
            format_bytes(s.bytes) if s.bytes else "–",
            s.pins,
            round(s.last_load_seconds, 2) if s.last_load_seconds is not None else "–",
            s.loads,
        ]
        for s in manager.status()
    ]


def summary(manager: MemoryManager) -> str:
    return (
        f"**Device:** `{manager.device}` · **budget:** {format_bytes(manager.budget.limit())} · "
        f"**in use:** {format_bytes(manager.used_bytes())} · "
        f"**offloaded to CPU RAM:** {format_bytes(manager.offloaded_bytes())}"
    )


def build_system_tab(manager: MemoryManager, labels: Mapping[str, str]) -> None:
    """`labels` maps each registered model key to its display name."""
    overview = gr.Markdown(summary(manager))
    table = gr.Dataframe(status_rows(manager, labels), headers=COLUMNS, interactive=False, label="Models")

    def refresh() -> tuple[str, list[list[Any]]]:
        return summary(manager), status_rows(manager, labels)

    @user_errors
    def unload(key: str) -> tuple[str, list[list[Any]]]:
        if key not in labels:
            raise gr.Error(f"unknown model {key!r}")
        manager.unload(key)
        return refresh()

    gr.Markdown("### Unload a model\nFrees its memory now; it loads again on its next use.")
    for key, label in labels.items():
        with gr.Row(equal_height=True):
            gr.Markdown(f"{label} — `{key}`")
            button = gr.Button("Unload", size="sm", scale=0)
            button.click(unload, gr.State(key), [overview, table], api_visibility="private")
    # Named endpoints, so scripts and tests can read and drive the same state the page shows.
    def system_status() -> list[dict[str, Any]]:
        """The table's rows, plus exact byte counts for scripts."""
        exact = {s.key: s.bytes for s in manager.status()}
        return [dict(zip(COLUMNS, row)) | {"bytes": exact[row[1]]} for row in status_rows(manager, labels)]

    def unload_model(key: str) -> str:
        unload(key)
        return f"unloaded {key}"

    gr.api(system_status, api_name="system_status")
    gr.api(unload_model, api_name="unload_model")
    gr.Timer(2.0).tick(refresh, outputs=[overview, table], show_progress="hidden", api_visibility="private")

"""System tab: the device, the budget, the queue and every model's live state.

Everyone sees the state; only the host (modules/roles.py) sees and may use the Unload buttons and the
`/unload_model` endpoint, which refuses anyone else with a message saying who the host is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gradio as gr

from modules.memory import MemoryManager, format_bytes
from modules.roles import Access
from modules.serving import Serving
from modules.tabs.common import user_errors

COLUMNS = ["model", "key", "state", "size", "in use", "last load (s)", "loads"]
#: How often an open System tab refreshes; the timer runs only while the tab is selected.
REFRESH_SECONDS = 2.0


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


def summary(manager: MemoryManager, serving: Serving, request: gr.Request | None = None) -> str:
    """The device, its memory, its fair queue and, for the visitor asking, their own quota."""
    queue = serving.queue.state()
    line = (
        f"**Device:** `{manager.device}` · **budget:** {format_bytes(manager.budget.limit())} · "
        f"**in use:** {format_bytes(manager.used_bytes())} · "
        f"**offloaded to CPU RAM:** {format_bytes(manager.offloaded_bytes())} · "
        f"**queue:** {queue.running} running, {queue.waiting} waiting from {queue.clients_waiting} "
        f"client{'s' if queue.clients_waiting != 1 else ''}"
    )
    if request is not None:
        line += f"\n\n**You:** {serving.queue.usage(serving.client(request)).describe()}"
    return line


def requester(request: gr.Request | None, profile: gr.OAuthProfile | None) -> tuple[str | None, str | None]:
    """(the --auth login, the Hugging Face login) of a request, either None when absent."""
    return (request.username if request is not None else None), (profile.username if profile is not None else None)


def build_system_tab(
    manager: MemoryManager,
    serving: Serving,
    labels: Mapping[str, str],
    access: Access,
    blocks: gr.Blocks,
    tabs: gr.Tabs,
    title: str,
) -> None:
    """`labels` maps each registered model key to its display name; `tabs` and `title` say when this
    tab is open (its refresh timer runs only then); `blocks` is the app, for its page load."""
    overview = gr.Markdown(summary(manager, serving))
    role = gr.Markdown()
    if access.space_owner is not None and access.admin is None:
        gr.LoginButton()  # Hugging Face OAuth: the Space's owner signs in to act as host
    table = gr.Dataframe(status_rows(manager, labels), headers=COLUMNS, interactive=False, label="Models")

    def refresh(request: gr.Request | None = None) -> tuple[str, list[list[Any]]]:
        return summary(manager, serving, request), status_rows(manager, labels)

    def require_host(request: gr.Request | None, profile: gr.OAuthProfile | None) -> None:
        if not access.is_host(*requester(request, profile)):
            raise gr.Error(f"Refused: {access.who_is_host()}.", print_exception=False)

    @user_errors
    def unload(key: str, request: gr.Request, profile: gr.OAuthProfile | None) -> tuple[str, list[list[Any]]]:
        require_host(request, profile)
        if key not in labels:
            raise gr.Error(f"unknown model {key!r}")
        manager.unload(key)
        return refresh(request)

    with gr.Column(visible=False) as host_controls:
        gr.Markdown("### Unload a model\nFrees its memory now; it loads again on its next use.")
        for key, label in labels.items():
            with gr.Row(equal_height=True):
                gr.Markdown(f"{label} — `{key}`")
                button = gr.Button("Unload", size="sm", scale=0)
                button.click(unload, gr.State(key), [overview, table], api_visibility="private")

    def show_role(request: gr.Request, profile: gr.OAuthProfile | None) -> tuple[str, gr.Column]:
        host = access.is_host(*requester(request, profile))
        note = "You are the **host**." if host else f"Read-only view: {access.who_is_host()}."
        return note, gr.Column(visible=host)

    blocks.load(show_role, None, [role, host_controls], api_visibility="private")

    # Named endpoints, so scripts and tests can read and drive the same state the page shows.
    def system_status() -> list[dict[str, Any]]:
        """The table's rows, plus exact byte counts for scripts."""
        exact = {s.key: s.bytes for s in manager.status()}
        return [dict(zip(COLUMNS, row)) | {"bytes": exact[row[1]]} for row in status_rows(manager, labels)]

    def system_memory() -> dict[str, Any]:
        """The summary line's figures in bytes (device budget, in use, offloaded) and the queue's counts."""
        queue = serving.queue.state()
        return {
            "device": manager.device,
            "budget": manager.budget.limit(),
            "used": manager.used_bytes(),
            "offloaded": manager.offloaded_bytes(),
            "queue_running": queue.running,
            "queue_waiting": queue.waiting,
        }

    def system_queue(request: gr.Request) -> dict[str, Any]:
        """The device's fair queue (requests running, waiting, and from how many clients), and the calling
        client's own quota: device-seconds used in the window, the limit (None: no quota), and
        `retry_after`, the seconds until it may run again when over quota (else None)."""
        queue, client = serving.queue.state(), serving.client(request)
        usage = serving.queue.usage(client)
        return {
            "running": queue.running,
            "waiting": queue.waiting,
            "clients_waiting": queue.clients_waiting,
            "client": client,
            "used_seconds": round(usage.used, 3),
            "quota_seconds": usage.limit,
            "window_seconds": usage.window,
            "retry_after": None if usage.retry_after is None else math.ceil(usage.retry_after),
        }

    def unload_model(key: str, request: gr.Request, profile: gr.OAuthProfile | None) -> str:
        """Unload one model now (host only); it loads again on its next use."""
        unload(key, request, profile)
        return f"unloaded {key}"

    gr.api(system_status, api_name="system_status")
    gr.api(system_memory, api_name="system_memory")
    gr.api(system_queue, api_name="system_queue")
    gr.api(unload_model, api_name="unload_model")
    # Each open page would otherwise poll every 2 s whatever tab it shows: tick only while this tab is open.
    timer = gr.Timer(REFRESH_SECONDS, active=False)
    timer.tick(refresh, outputs=[overview, table], show_progress="hidden", api_visibility="private")

    def follow(selected: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
        """Start the timer (with a fresh view) when this tab is selected; stop it when another one is."""
        if selected.value != title:
            return gr.Timer(active=False), gr.skip(), gr.skip()
        return gr.Timer(active=True), *refresh(request)

    tabs.select(follow, None, [timer, overview, table], api_visibility="private", queue=False)

"""Atelier: every generative modality in one Gradio app, sharing one memory manager.

`python app.py` serves the catalogue in models.yaml; `python app.py --tiny` serves tiny random-weight
models built offline. This file parses flags, builds the manager and the wrappers, renders one tab per
task and launches. torch and the model libraries are imported only when a model is first used.
"""

from __future__ import annotations

from modules.threads_policy import apply_thread_policy

apply_thread_policy()  # first: torch and llama.cpp read it once, when they load (see the module)

import argparse
import logging
import os
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

from modules.api.access import parse_api_keys
from modules.api.openai import openai_routes
from modules.catalog import TASKS, Catalog, CatalogError, load_catalog
from modules.memory import Budget, MemoryManager, parse_bytes
from modules.outputs import OutputLimits, start_housekeeping
from modules.roles import Access
from modules.serving import FairQueue, Quota, Serving
from modules.wrappers import build_wrapper, wrapper_tasks
from modules.wrappers.base import HostSettings, InvalidInput, Wrapper

log = logging.getLogger("atelier")
QUEUE_POLL_SECONDS = 0.05
HERE = Path(__file__).resolve().parent

#: task -> (tab title, "module:builder"); builders take (wrappers, default, **task options).
TABS: dict[str, tuple[str, str]] = {
    "chat": ("Chat", "modules.tabs.chat:build_chat_tab"),
    "image": ("Image", "modules.tabs.image:build_image_tab"),
    "caption": ("Caption", "modules.tabs.caption:build_caption_tab"),
    "music": ("Music", "modules.tabs.music:build_music_tab"),
    "pointcloud": ("3D", "modules.tabs.points3d:build_points3d_tab"),
}
HISTORY_TITLE, SYSTEM_TITLE = "History", "System"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # Hugging Face Spaces (and Gradio's own convention) pass these through the environment.
    parser.add_argument(
        "--host",
        default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        help="interface to listen on (0.0.0.0 for a LAN); default $GRADIO_SERVER_NAME or 127.0.0.1",
    )
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also serve through a public Gradio link")
    parser.add_argument(
        "--auth",
        default=os.environ.get("ATELIER_AUTH"),
        help="user:password (comma-separate several); also read from $ATELIER_AUTH",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        help="a key the OpenAI-compatible API at /v1 accepts as 'Authorization: Bearer KEY' (repeat or "
        "comma-separate; also $ATELIER_API_KEYS); given, or with --auth, /v1 requires one",
    )
    parser.add_argument("--admin", metavar="USER", help="the --auth user who is the host (may unload models)")
    parser.add_argument("--models", type=Path, default=HERE / "models.yaml", help="the model catalogue to serve")
    parser.add_argument("--tiny", action="store_true", help="serve tiny random-weight models built offline")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--memory-budget", type=parse_bytes, help="device budget, e.g. 12GB (default: from the device)")
    parser.add_argument("--idle-unload", type=float, metavar="MINUTES", help="unload models idle this long (off by default)")
    parser.add_argument("--outputs", type=Path, default=HERE / "outputs", help="the only folder files are served from")
    parser.add_argument("--outputs-max-size", type=parse_bytes, default="2GB", help="the output folder's size cap (oldest files go first)")
    parser.add_argument("--outputs-max-hours", type=float, default=24.0, help="output files older than this are removed")
    parser.add_argument(
        "--outputs-keep-minutes", type=float, default=30.0, help="output files this recent are never removed (a page may show them)"
    )
    parser.add_argument("--max-prompt-chars", type=int, default=10_000)
    parser.add_argument("--max-audio-seconds", type=float, default=30.0, help="longest music a request may ask for")
    parser.add_argument("--queue-size", type=int, default=64, help="requests waiting beyond this get 'queue is full'")
    parser.add_argument(
        "--quota-seconds",
        type=float,
        default=_env_float("ATELIER_QUOTA_SECONDS"),
        help="device-seconds each client may use per --quota-window (default: no quota; also $ATELIER_QUOTA_SECONDS)",
    )
    parser.add_argument("--quota-window", type=float, default=60.0, metavar="MINUTES", help="the quota's sliding window")
    parser.add_argument(
        "--behind-proxy",
        action="store_true",
        help="the app is reachable only through a reverse proxy that appends the visitor's address to "
        "X-Forwarded-For (implied on a Hugging Face Space; --share's tunnel needs nothing): clients are told apart by it",
    )
    parser.add_argument("--max-image-side", type=int, default=1024, help="largest image width or height a request may ask for")
    parser.add_argument("--max-image-pixels", type=int, default=40_000_000, help="uploads declaring more pixels are refused")
    parser.add_argument(
        "--mcp",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="serve every generation tab as an MCP tool at /gradio_api/mcp/ (default on; --no-mcp turns it off)",
    )
    parser.add_argument(
        "--safety-checker",
        choices=["on", "off", "auto"],
        default="auto",
        help="image safety checker for every model; auto: as models.yaml says per model, on when --share",
    )
    return parser.parse_args(argv)


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def resolve_device(requested: str) -> str:
    """'auto' picks CUDA or MPS when present; torch is imported only where a GPU may exist."""
    if requested != "auto":
        return requested
    if Path("/dev/nvidia0").exists() or Path("/proc/driver/nvidia").exists():
        import torch

        if torch.cuda.is_available():
            return "cuda"
    if sys.platform == "darwin":
        import torch

        if torch.backends.mps.is_available():
            return "mps"
    return "cpu"


def parse_auth(text: str | None) -> list[tuple[str, str]] | None:
    if not text:
        return None
    pairs = []
    for item in text.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise SystemExit("--auth wants user:password (comma-separate several)")
        pairs.append((user, password))
    return pairs


def load_models(args: argparse.Namespace) -> Catalog:
    if args.tiny:
        from modules.tiny import build_tiny_catalog

        log.info("building tiny random-weight models (cached after the first run)")
        return build_tiny_catalog()
    return load_catalog(args.models, wrapper_tasks())


def build_wrappers(catalog: Catalog, manager: MemoryManager, host: HostSettings) -> dict[str, dict[str, Wrapper]]:
    """One wrapper per entry; the entries' `defaults` are validated here, so a bad one stops the start."""
    wrappers: dict[str, dict[str, Wrapper]] = {}
    for task, group in catalog.tasks.items():
        wrappers[task] = {}
        for entry in group.models:
            try:
                wrappers[task][entry.id] = build_wrapper(entry, manager, host=host)
            except InvalidInput as exc:
                raise CatalogError(f"tasks.{task}[{entry.id}].defaults: {exc}") from None
    return wrappers


def build_app(
    catalog: Catalog,
    manager: MemoryManager,
    wrappers: dict[str, dict[str, Wrapper]],
    serving: Serving,
    access: Access = Access(),
    outputs: Path = HostSettings.output_dir,
) -> Any:
    import gradio as gr

    from modules.tabs import bridge
    from modules.tabs.history import build_history_tab, hook_of
    from modules.tabs.system import build_system_tab

    with gr.Blocks(title="Atelier") as demo:
        gr.Markdown("# Atelier\nEvery generative modality in one place, sharing one memory manager.")
        parts: dict[str, Any] = {}  # task -> what its builder returned, for wiring between tabs
        with gr.Tabs() as tabs:
            for task in TASKS:
                title, builder_path = TABS.get(task, (task.capitalize(), ""))
                with gr.Tab(title, id=task):
                    group = catalog.tasks.get(task)
                    if group is None or not builder_path:
                        gr.Markdown(f"No **{task}** models are configured. Add some under `tasks.{task}` in models.yaml.")
                        continue
                    module_name, function = builder_path.split(":")
                    options = {"serving": serving} | ({"fallback": group.fallback} if group.fallback else {})
                    parts[task] = getattr(import_module(module_name), function)(wrappers[task], group.default, **options)
            bridge.connect(tabs, parts)  # before History, which records the runs the bridge adds too
            with gr.Tab(HISTORY_TITLE, id="history"):
                hooks = {task: hook for task, part in parts.items() if (hook := hook_of(part)) is not None}
                build_history_tab(tabs, hooks, {task: TABS[task][0] for task in hooks}, outputs)
            with gr.Tab(SYSTEM_TITLE, id="system"):
                labels = {w.key: w.entry.label for group in wrappers.values() for w in group.values()}
                build_system_tab(manager, serving, labels, access, demo, tabs, SYSTEM_TITLE)
    return demo


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    auth = parse_auth(args.auth)
    try:
        access = Access.from_settings(args.admin, [user for user, _ in auth or []], args.share, args.host)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.outputs.mkdir(parents=True, exist_ok=True)
    # Gradio serves files from its temp dir: keep that inside the app's own output folder.
    os.environ.setdefault("GRADIO_TEMP_DIR", str(args.outputs / "gradio"))
    start_housekeeping(
        args.outputs, OutputLimits(args.outputs_max_size, args.outputs_max_hours * 3600, args.outputs_keep_minutes * 60)
    )
    device = resolve_device(args.device)
    manager = MemoryManager(
        device,
        Budget(device, override=args.memory_budget),
        idle_unload_seconds=args.idle_unload * 60 if args.idle_unload else None,
    )
    host = HostSettings(
        output_dir=args.outputs,
        max_prompt_chars=args.max_prompt_chars,
        max_image_side=args.max_image_side,
        max_image_pixels=args.max_image_pixels,
        safety_checker=args.safety_checker,
        public=args.share,
        max_audio_seconds=args.max_audio_seconds,
    )
    try:
        catalog = load_models(args)
        wrappers = build_wrappers(catalog, manager, host)
    except CatalogError as exc:
        raise SystemExit(f"error: {exc}") from None
    # One fair queue for the device: every request that runs a model waits in it (modules/serving/).
    serving = Serving(
        FairQueue(max_waiting=args.queue_size, quota=Quota(args.quota_seconds, args.quota_window * 60)),
        trust_forwarded=args.behind_proxy or "SPACE_ID" in os.environ,
    )
    demo = build_app(catalog, manager, wrappers, serving, access, args.outputs)
    if args.share and not auth:
        log.warning("--share without --auth: anyone with the link can use this machine")
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    # Gradio's queue polls every 1 ms for work to start and every 10 ms for progress to send; on 2 cores
    # those wake-ups take the GIL from generation (py-spy: the event loop held it as often as the model).
    # 20 Hz (Gradio's own Windows default is slower) only delays a start or a progress bar by 50 ms.
    for setting in ("sleep_when_free", "progress_update_sleep_when_free"):
        if hasattr(demo._queue, setting):
            setattr(demo._queue, setting, max(getattr(demo._queue, setting), QUEUE_POLL_SECONDS))
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        # Device events start at once and wait in the fair queue, each holding a worker thread.
        max_threads=args.queue_size + 16,
        max_file_size="20mb",
        allowed_paths=[str(args.outputs)],  # generated files are served from --outputs only
        mcp_server=args.mcp,
        # The OpenAI-compatible API: a sibling of the tabs on the same server (see modules/api/openai.py).
        app_kwargs={"routes": openai_routes(wrappers, host, serving, api_keys=parse_api_keys(args.api_key),
                                            login_required=auth is not None)},
    )


if __name__ == "__main__":
    main()

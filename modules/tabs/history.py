"""History: one panel listing everything the tabs made in this browser, newest first.

Each tab reports what it made through a `Made` hook: its page events, its settings and the components
that hold its result. After each successful run this module records an entry (what was asked for, the
model, the seed, the settings, the stats line with its timing, and the paths of the files made) and
renders the list with a preview, a download per file and Re-run, which opens the tab with those settings
filled in (the seed fixed to the one used), ready for Generate or for one change first. A tab whose
work goes on (Chat: a conversation) names the entry it continues, and its runs update that one entry.

Entries live in the browser's own localStorage (`gr.BrowserState`): they survive a reload and are never
shared between browsers. They hold parameters and file paths only, never the files. Since a browser can
write anything into its localStorage, a path is shown or filled back only when it lies inside a folder
this server serves anyway (the output folder, Gradio's upload folder, the examples); a file the output
folder's housekeeping has removed is said to be removed.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.components import Component
from gradio.utils import get_upload_folder

from modules.tabs.common import EXAMPLES_DIR

#: The newest entries kept; older ones drop off (localStorage holds a few MB per site).
MAX_ENTRIES = 40
STORAGE_KEY = "atelier-history"
#: BrowserState obfuscates its value with this key, which the page itself holds (so it is no secret); a
#: fixed one lets the history outlive a server restart, where a random one would lose it.
STORAGE_SECRET = "atelier-history-v1"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif"}
CLOUD_SUFFIXES = (".ply", ".glb")  # in order of preference for the preview
PREVIEWED = {*IMAGE_SUFFIXES, ".wav", *CLOUD_SUFFIXES}  # a transcript has none: its text is in the entry
#: Settings an entry shows in its own places (or not at all), not in its settings line.
SHOWN_APART = {"prompt", "model", "image", "image_model", "source", "seed", "randomise"}
#: The longest text an entry shows of what was asked for or said (the whole is in its download).
SHOWN_CHARS = 240

Entry = dict[str, Any]
ENTRY_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: entries are told apart, and Re-run picks one, by it
#: Where a setting lives: one input, or several that hold the same value (read from the first, filled
#: into each; Chat's conversation is both its chatbot and ChatInterface's copy of it).
Setting = Component | tuple[Component, ...]


def held_in(setting: Setting) -> tuple[Component, ...]:
    return setting if isinstance(setting, tuple) else (setting,)


def by_prompt(settings: Mapping[str, Any]) -> tuple[str, Any]:
    """What a run asked for and which model made it, for a tab whose main input is `prompt`."""
    return str(settings.get("prompt") or ""), settings.get("model")


@dataclass(frozen=True)
class Made:
    """A tab's hook into History: the events that make something, and where what they made shows."""

    #: The page's run events (a list the tab may still extend while the page is built).
    runs: list[Any]
    #: name -> input, recorded with each entry and filled back by Re-run. "seed" and "randomise", where
    #: present, are set to the seed used and unticked, so Re-run repeats the result.
    settings: dict[str, Setting]
    files: Component  # the files made (paths)
    stats: Component  # the run's stats line: timing, steps, model
    seed_used: Component | None = None
    text: Component | None = None  # a text result, such as a caption
    text_label: str = "Text"  # what the entry calls that text
    #: settings -> (what was asked for, the model), as the entry shows them
    describe: Callable[[Mapping[str, Any]], tuple[str, Any]] = field(default=by_prompt)
    #: A state holding the id of the entry the tab's work continues (Chat: its conversation). Runs with one
    #: id update that entry, moved to the top, instead of adding one each; Re-run sets it to the entry's id.
    entry_id: Component | None = None
    rerun_label: str = "Re-run"
    #: setting name -> what makes its stored value safe to put back (it comes from the browser's storage,
    #: so it may be anything), for settings that hold more than a plain value
    restore: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)


def hook_of(part: Any) -> Made | None:
    """The History hook in what a tab builder returned: the hook itself, or its `made` field."""
    return part if isinstance(part, Made) else getattr(part, "made", None)


def served_roots(output_dir: Path) -> list[Path]:
    return [output_dir.resolve(), Path(get_upload_folder()).resolve(), EXAMPLES_DIR.resolve()]


def existing_file(path: Any, roots: list[Path]) -> str | None:
    """`path` if it is a file inside one of `roots`; None if it is not there (any more) or lies elsewhere."""
    if not isinstance(path, str) or not path:
        return None
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    inside = any(resolved.is_relative_to(root) for root in roots)
    return str(resolved) if inside and resolved.is_file() else None


def file_paths(value: Any) -> list[str]:
    """The paths a result component holds: one path, or a list of them."""
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, str) and item]


def is_entry_id(value: Any) -> bool:
    return isinstance(value, str) and ENTRY_ID.fullmatch(value) is not None


def entries_of(history: Any) -> list[Entry]:
    """The stored list, with anything that is not an entry left out (it comes from the browser)."""
    if not isinstance(history, list):
        return []
    shape = {"task": str, "time": (int, float), "settings": dict, "files": list}
    return [
        entry
        for entry in history
        if isinstance(entry, dict)
        and is_entry_id(entry.get("id"))
        and all(isinstance(entry.get(key), kind) for key, kind in shape.items())
    ]


def recorder(task: str, made: Made) -> Callable[..., Any]:
    """The function that adds a finished run of `task` to the history (its inputs: the history, the
    settings, then files, stats and, where the tab has them, the seed used and the text)."""
    names = list(made.settings)

    def record(history: Any, *values: Any) -> Any:
        settings = dict(zip(names, values))
        files, stats, *rest = values[len(names) :]
        seed = rest.pop(0) if made.seed_used is not None else None
        text = rest.pop(0) if made.text is not None else None
        entry_id = rest.pop(0) if made.entry_id is not None else None
        paths = file_paths(files)
        entries = entries_of(history)
        if not paths and not text:
            return gr.skip()
        # A failed run leaves the last result in place (and a continued one may be unchanged): that one is
        # already recorded.
        if any(entry["task"] == task and entry["files"] == paths and entry.get("text") == text for entry in entries):
            return gr.skip()
        if is_entry_id(entry_id):
            entries = [entry for entry in entries if entry["id"] != entry_id]
        else:
            entry_id = uuid.uuid4().hex
        entry = {
            "id": entry_id,
            "task": task,
            "time": time.time(),
            "settings": settings,
            "seed": seed,
            "stats": stats or "",
            "files": paths,
            "text": text,
        }
        return [entry, *entries][:MAX_ENTRIES]

    return record


def filled_by(made: Made) -> list[Component]:
    """The components Re-run sets for a tab, in `refill` order."""
    settings = [component for setting in made.settings.values() for component in held_in(setting)]
    return settings + ([made.entry_id] if made.entry_id is not None else [])


def refill(made: Made, entry: Entry, roots: list[Path]) -> list[Any]:
    """The values Re-run puts back into the tab's inputs, in `made.settings` order (then the entry's id,
    where the tab continues entries)."""
    settings = entry["settings"]
    values = []
    for name, setting in made.settings.items():
        value, component = settings.get(name), held_in(setting)[0]
        if name in made.restore:
            value = made.restore[name](value)
        elif isinstance(component, (gr.File, gr.Image)):
            value = existing_file(value, roots)
        elif name == "seed" and made.seed_used is not None and entry.get("seed") is not None:
            value = entry["seed"]
        elif name == "randomise" and made.seed_used is not None and entry.get("seed") is not None:
            value = False
        values += [value] * len(held_in(setting))
    return values + ([entry["id"]] if made.entry_id is not None else [])


def shorten(text: str, limit: int = SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def text_of(made: Made, entry: Entry) -> str:
    return f"{made.text_label}: “{shorten(str(entry.get('text') or ''))}”"


def details(made: Made, entry: Entry, title: str, with_text: bool = True) -> str:
    asked, model = made.describe(entry["settings"])
    when = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
    lines = [f"{title} · {when}" + (f" · model `{model}`" if model else "")]
    if asked:
        lines.append(f"“{shorten(asked)}”")
    if with_text and entry.get("text"):
        lines.append(text_of(made, entry))
    # Plain values only: a setting that holds more (Chat's conversation) shows through the lines above.
    shown = [
        f"{name} {shorten(str(value), 80)}"
        for name, value in entry["settings"].items()
        if name not in SHOWN_APART and isinstance(value, (str, int, float)) and value != ""
    ]
    if entry.get("seed") is not None:
        shown.insert(0, f"seed {entry['seed']}")
    if shown:
        lines.append(" · ".join(shown))
    if entry.get("stats"):
        lines.append(str(entry["stats"]))
    return "  \n".join(lines)  # one line each, no paragraph gaps


def download_labels(files: list[str]) -> list[tuple[str, str]]:
    """A button label per file: its type, numbered where a run made several of one type (a batch)."""
    kinds = [Path(path).suffix.lstrip(".").upper() for path in files]
    return [
        (f"Download {kind}" + (f" {kinds[:i].count(kind) + 1}" if kinds.count(kind) > 1 else ""), path)
        for i, (kind, path) in enumerate(zip(kinds, files))
    ]


def preview(files: list[str]) -> None:
    """A small view of what was made: an image, a player or a 3D view."""
    images = [path for path in files if Path(path).suffix.lower() in IMAGE_SUFFIXES]
    sounds = [path for path in files if Path(path).suffix.lower() == ".wav"]
    clouds = [path for suffix in CLOUD_SUFFIXES for path in files if path.lower().endswith(suffix)]
    if images:
        gr.Image(images[0], show_label=False, interactive=False, height=160, buttons=[])
    elif sounds:
        gr.Audio(sounds[0], show_label=False, interactive=False, buttons=[])
    elif clouds:
        gr.Model3D(clouds[0], show_label=False, display_mode="point_cloud", height=200, clear_color=(0.1, 0.1, 0.12, 1.0))


def build_history_tab(
    tabs: gr.Tabs, made: Mapping[str, Made], titles: Mapping[str, str], output_dir: Path
) -> None:
    """The History panel, and a recorder on every run event of every tab in `made` (task -> hook).

    Call it after every tab (and anything that adds run events to them) is built.
    """
    roots = served_roots(output_dir)
    history = gr.BrowserState([], storage_key=STORAGE_KEY, secret=STORAGE_SECRET)
    gr.Markdown(
        "Everything made in this browser, newest first (kept in this browser only, the newest "
        f"{MAX_ENTRIES}). Re-run opens the tab with the same settings and seed: press Generate, or change "
        "something first; Continue opens a chat where it was. The server keeps files for a limited time; after "
        "that an entry keeps its settings."
    )
    clear = gr.Button("Clear history", size="sm", variant="secondary", scale=0, min_width=140)
    clear.click(lambda: [], None, history, api_visibility="private")

    for task, hook in made.items():
        extra = [c for c in (hook.seed_used, hook.text, hook.entry_id) if c is not None]
        inputs = [history, *(held_in(setting)[0] for setting in hook.settings.values()), hook.files, hook.stats, *extra]
        for run in hook.runs:
            run.success(recorder(task, hook), inputs, history, api_visibility="private", show_progress="hidden")

    # Re-run is one event, outside the list: an entry's button only names its entry, in the browser. A
    # server event of the button's own would be lost to a click that lands while gr.render draws the list
    # again (as it does just after an entry is stored): the redraw replaces the events the list registered.
    chosen = gr.Textbox(visible=False)
    filled = {task: filled_by(hook) for task, hook in made.items()}

    def rerun(choice: str, stored: Any) -> list[Any]:
        entry_id = choice.split(" ")[0]  # then the time of the click, so a second click is a change too
        entry = next((entry for entry in entries_of(stored) if entry["id"] == entry_id and entry["task"] in made), None)
        if entry is None:
            return [gr.skip()] * (sum(map(len, filled.values())) + 1)
        values = []
        for task, components in filled.items():
            values += refill(made[task], entry, roots) if task == entry["task"] else [gr.skip()] * len(components)
        return [*values, gr.Tabs(selected=entry["task"])]

    outputs = [component for components in filled.values() for component in components]
    chosen.change(rerun, [chosen, history], [*outputs, tabs], api_visibility="private", show_progress="hidden")

    @gr.render(inputs=history)
    def show(stored: Any) -> None:
        entries = [entry for entry in entries_of(stored) if entry.get("task") in made]
        if not entries:
            gr.Markdown("Nothing yet: what you make on the other tabs appears here.")
        for entry in entries:
            hook, task = made[entry["task"]], entry["task"]
            files = [path for path in (existing_file(p, roots) for p in file_paths(entry["files"])) if path]
            with gr.Row(equal_height=False, variant="panel", elem_classes="history-entry"):
                # A run without a picture, player or 3D view (a chat) shows its text where those go.
                text_apart = bool(files) and not any(Path(path).suffix.lower() in PREVIEWED for path in files)
                with gr.Column(scale=1, min_width=160):
                    if not files:
                        gone = f"The files of this run are no longer on the server; {hook.rerun_label} makes them again."
                        gr.Markdown(f"*{gone}*")
                    elif text_apart:
                        gr.Markdown(text_of(hook, entry), max_height=160, container=True, padding=True)
                    else:
                        preview(files)
                with gr.Column(scale=3, min_width=240):
                    gr.Markdown(details(hook, entry, titles.get(task, task), with_text=not text_apart))
                    with gr.Row():
                        rerun = gr.Button(
                            hook.rerun_label, size="sm", variant="primary", scale=0, min_width=100, key=f"rerun-{entry['id']}"
                        )
                        for label, path in download_labels(files):
                            gr.DownloadButton(label, path, size="sm", scale=0, min_width=140)
            # The id is checked hex (entries_of), so it is safe inside the script.
            rerun.click(None, None, chosen, js=f"() => '{entry['id']} ' + Date.now()")

"""What every tab shares: turning errors into clear messages, progress, model pickers and sliders."""

from __future__ import annotations

import functools
import html
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import gradio as gr
from annotated_types import Ge, Gt, Le, Lt

from modules.memory import MemoryManagerError
from modules.serving import OverQuota, QueueFull, Serving
from modules.threads_policy import return_freed_memory
from modules.wrappers.batching import let_in_together
from modules.serving.zerogpu import gpu_seconds, on_gpu
from modules.wrappers.base import InvalidInput, ModelUnavailable, OnStep, Settings, Step, Wrapper

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: How often a request waiting for the device is told its place and wait.
WAIT_UPDATE_SECONDS = 1.0
#: How often a stepped generation sends its status line (and so how soon Stop can take effect) and
#: moves its progress bar, at most.
STATUS_SECONDS = 0.25
#: Below this width (CSS px) the page is a phone's: settings start folded.
PHONE_WIDTH = 700
USER_ERRORS = (InvalidInput, ModelUnavailable, MemoryManagerError)
#: Files the tabs' examples use, served as they are (never copied into, nor swept from, the output folder).
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"


def as_user_error(exc: BaseException) -> gr.Error:
    if isinstance(exc, USER_ERRORS):
        return gr.Error(str(exc), print_exception=False)
    log.exception("request failed", exc_info=exc)
    return gr.Error(f"Something went wrong ({type(exc).__name__}: {exc}). The server is still running.")


def user_errors(fn: F) -> F:
    """Turn any failure of a tab handler (plain or generator) into one clear `gr.Error`."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Any:
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise as_user_error(exc) from None

        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise as_user_error(exc) from None

    return plain  # type: ignore[return-value]


def status_update(outputs: int, status: int = -1) -> Callable[[str], tuple[Any, ...]]:
    """An update of an event's status line (output `status` of `outputs`) that leaves the others as they are."""
    return lambda line: tuple(line if i == status % outputs else gr.skip() for i in range(outputs))


def errors_in_place(updates: Iterable[tuple[Any, ...]], outputs: int, status: int = -1) -> Iterator[tuple[Any, ...]]:
    """For a page event: a failure is written into its status line (output `status` of `outputs`), and
    every other output keeps what it shows, instead of a fading toast and "Error" pills over the outputs.

    The message stays until the next run writes that line. API endpoints call the handler directly and
    so still raise `gr.Error` for scripts.
    """
    try:
        yield from updates
    except gr.Error as exc:
        yield status_update(outputs, status)(f"Not done: {exc.message}")


def step_progress(progress: gr.Progress, description: str, unit: str = "steps", scale: float = 1.0) -> OnStep:
    """Adapt a wrapper's `on_step(i, total)` to a Gradio progress bar (`scale` converts steps to `unit`).

    The bar moves at the first and last step and at most every `STATUS_SECONDS` between: each move is a
    message on which the page refreshes every component's loading status, which costs the browser more
    CPU than a tiny model's step, and on a small machine the browser shares the cores with the model.
    """
    last_sent = float("-inf")

    def on_step(step: int, total: int) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if step < total and now - last_sent < STATUS_SECONDS:
            return
        last_sent = now
        progress((round(step * scale, 2), round(total * scale, 2)), desc=description, unit=unit)

    return on_step


class Pace:
    """The time left, from this run's own rate (Gradio's ETA averages earlier runs of any size).

    The clock starts at the first step seen, so loading the model does not count; it restarts when
    the count restarts (a new stage).
    """

    def __init__(self) -> None:
        self.first: tuple[int, int, float] | None = None  # (step, total, when)

    def left(self, step: int, total: int) -> str:
        """" · about 12 s left", or "" until there is a rate to go by."""
        now = time.monotonic()
        if self.first is None or step < self.first[0] or total != self.first[1]:
            self.first = (step, total, now)
        done, elapsed = step - self.first[0], now - self.first[2]
        if done <= 0 or elapsed <= 0 or step >= total:
            return ""
        return f" · about {math.ceil((total - step) * elapsed / done)} s left"


def stepped_outputs(
    items: Iterable[Any], outputs: int, status: Callable[[Step], str], finish: Callable[[Any], tuple[Any, ...]]
) -> Iterator[tuple[Any, ...]]:
    """Relay a wrapper's `Step`s then its result to an event with `outputs` outputs, the last a status line.

    A step updates only the status (with the time left at this run's rate), at most every
    `STATUS_SECONDS` (each yield is a message to the browser, which costs more than a tiny model's
    step). A yield is also where Stop can close the generator, so Stop takes effect within that
    interval plus one step; the progress bar, fed by `on_step`, still moves every step.
    """
    last = float("-inf")
    pace = Pace()
    for item in items:
        if not isinstance(item, Step):
            yield finish(item)
            continue
        left = pace.left(item.step, item.total)
        if time.monotonic() - last >= STATUS_SECONDS:
            last = time.monotonic()
            yield (*[gr.skip()] * (outputs - 1), status(item) + left)


def throttle(items: Iterable[T], seconds: float) -> Iterator[T]:
    """Pass on at most one item per `seconds` (the newest one), and always the last item.

    Each yield is a message to the browser; on a fast model, one per token costs more than the token.
    """
    last_sent = float("-inf")
    held: list[T] = []
    for item in items:
        now = time.monotonic()
        if now - last_sent >= seconds:
            last_sent = now
            held.clear()
            yield item
        else:
            held[:] = [item]
    yield from held


def shared_pass(batch: int) -> str:
    """A stats line's note that a request ran in one forward pass with others (batching)."""
    if batch <= 1:
        return ""
    return f" · one pass with {batch - 1} other request{'s' if batch > 2 else ''}"


def request_seed(seed_value: float | None, randomise: bool) -> float:
    """The seed setting a request sends its wrapper: -1 (the wrapper picks one and reports it) or the box's value."""
    return -1 if randomise or seed_value is None else seed_value


def pick(wrappers: Mapping[str, Wrapper], model_id: object, default: str | None = None) -> Wrapper:
    """The wrapper for a model id sent by the browser or an API caller; only catalogue ids are accepted.

    An API caller may leave the model out (None): then `default` is used where given.
    """
    if model_id is None and default is not None:
        model_id = default
    if model_id not in wrappers:
        raise InvalidInput(f"model={model_id!r} is not in this server's catalogue; choose one of {sorted(wrappers)}")
    return wrappers[model_id]  # type: ignore[index]


def model_dropdown(wrappers: Mapping[str, Wrapper], default: str, label: str = "Model") -> gr.Dropdown:
    choices = [(wrapper.entry.label, model_id) for model_id, wrapper in wrappers.items()]
    return gr.Dropdown(choices=choices, value=default, label=label, interactive=len(choices) > 1)


def model_notes(wrapper: Wrapper, *more: tuple[str, str]) -> str:
    """The model's notes as one compact line, the full sentences on demand (an HTML `<details>`).

    The line always names the licence with its restriction (a non-commercial licence must not hide
    behind a click), random weights and anything missing; `more` adds a tab's own (short, full) notes.
    """
    entry = wrapper.entry
    restriction = f" ({entry.license_note})" if entry.license_note else ""
    notes = [(f"Licence: {entry.license}{restriction}", f"**Licence:** {entry.license}{restriction}")]
    if entry.random_weights:
        notes.append(("Random weights", "**Random weights, for testing:** outputs are noise by design."))
    if wrapper.backend_note:
        notes.append(("Backend note", f"**Backend:** {wrapper.backend_note}"))
    missing = wrapper.availability()
    if missing:
        notes.append(("Not available here yet", f"**Not available on this machine yet:** {missing}"))
    notes.extend(more)
    line = " · ".join(short for short, _ in notes)
    details = "\n\n".join(full for _, full in notes)
    return f'<details class="model-notes"><summary>{html.escape(line)}</summary>\n\n{details}\n\n</details>'


def follow_model(
    model: gr.Dropdown,
    wrappers: Mapping[str, Wrapper],
    notes: gr.Markdown,
    defaults: Mapping[str, Any],
    notes_of: Callable[[Any], str] = model_notes,
) -> None:
    """The notes follow the model however it is set, the settings take its defaults only when a person
    picks it (History's Re-run sets a model together with its own settings).

    `defaults` maps each field of the wrapper's defaults to the control that shows it.
    """
    model.change(lambda model_id: notes_of(pick(wrappers, model_id)), model, notes, api_visibility="private")

    def adopt_defaults(model_id: str) -> tuple[Any, ...]:
        chosen = pick(wrappers, model_id).defaults
        return tuple(getattr(chosen, field) for field in defaults)

    model.input(adopt_defaults, model, list(defaults.values()), api_visibility="private")


def _bounds(schema: type[Settings], name: str) -> tuple[float | None, float | None]:
    low = high = None
    for rule in schema.model_fields[name].metadata:
        if isinstance(rule, (Ge, Gt)):
            low = rule.ge if isinstance(rule, Ge) else rule.gt
        if isinstance(rule, (Le, Lt)):
            high = rule.le if isinstance(rule, Le) else rule.lt
    return low, high


C = TypeVar("C", gr.Slider, gr.Number, gr.Dropdown)


def named_errors(component: C) -> C:
    """Make a slider, number box or choice name itself when an API caller sends a bad value (a
    non-number, out of range, not one of the choices).

    The instance's `preprocess` is wrapped rather than the class subclassed: Gradio writes a `.pyi` stub
    beside any module that subclasses a component.
    """
    preprocess = component.preprocess
    numeric = isinstance(component, (gr.Slider, gr.Number))

    def checked(payload: Any) -> Any:
        if numeric and payload is not None and (isinstance(payload, bool) or not isinstance(payload, (int, float))):
            raise gr.Error(f"{component.label}={payload!r} is not a number", print_exception=False)
        try:
            return preprocess(payload)
        except gr.Error as exc:
            raise gr.Error(f"{component.label}: {exc.message}", print_exception=False) from None

    component.preprocess = checked  # type: ignore[method-assign]
    return component


def api_number(
    name: str, wrapper: Wrapper, setting: str | None = None, maximum: float | None = None, value: float | None = None
) -> gr.Number:
    """An API-only number parameter: hidden on the page, `value` (None: the model's default) unless sent.

    The page's own controls start from one model's defaults; an API caller who names another model and
    leaves a setting out should get that model's default instead, so API calls use these inputs. The
    range (and whether it is an integer) comes from the wrapper's settings field `setting` (default:
    `name`), so a bad value is refused naming the API's own parameter.
    """
    schema = type(wrapper.defaults)
    field = setting or name
    low, high = _bounds(schema, field)
    integer = schema.model_fields[field].annotation is int
    return named_errors(
        gr.Number(
            value=value,
            label=name,
            precision=0 if integer else None,
            minimum=low,
            maximum=maximum if maximum is not None else high,
            visible=False,
        )
    )


def api_text(name: str) -> gr.Textbox:
    """An API-only text parameter: hidden on the page, None (the model's default) unless sent."""
    return gr.Textbox(value=None, label=name, visible=False)


def api_file(name: str) -> gr.File:
    """An API-only image upload (a main input, so required): hidden on the page."""
    return gr.File(value=None, label=name, file_types=["image"], type="filepath", visible=False)


def api_choice(name: str, choices: list[str]) -> gr.Dropdown:
    """An API-only choice (its allowed values show in the API docs and MCP schema): None unless sent."""
    return named_errors(gr.Dropdown(choices=choices, value=None, label=name, visible=False))


#: Gradio starts device events at once; they wait for the device in the fair queue (`on_device`).
DEVICE_EVENT: dict[str, Any] = {"concurrency_limit": None}
#: How a device event sizes its request for the queue: its arguments (by name) -> units of work.
Work = Callable[[Mapping[str, Any]], float]


def batch_part(value: Any) -> str:
    """A setting as a batch key compares it: a number by its value (a page's slider sends 8.0 where an
    API caller sends 8)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return repr(value)


def on_device(
    serving: Serving,
    fn: Callable[..., Iterator[Any]],
    kind: str,
    show: Callable[[str], Any],
    page: bool = True,
    work: Work | None = None,
    default: str | None = None,
    refused: Callable[[str], Any] | None = None,
    batch: Sequence[str] = (),
    stopped: Callable[[gr.Request | None], bool] | None = None,
) -> Callable[..., Iterator[Any]]:
    """`fn` (a generator handler) run in its turn from the device's fair queue, for any event.

    While it waits, `show(line)` updates say its place and estimated wait. A request refused (quota,
    full queue) gets `refused(message)` on the page (default: `show("Not done: ...")`) and a `gr.Error`
    through the API. The turn ends however the handler does: finished, failed, stopped or its client
    gone. The queue learns the rate of `kind` per model (`default` when the request names none), in
    units of `work(arguments)` (default: 1 per request); the same estimate sizes a ZeroGPU request.
    Requests whose arguments named in `batch` are equal may run together in one turn (the wrapper then
    batches them). A request for which `stopped(request)` turns true while it waits (a Stop that keeps
    the run's events alive, `StopFlags`) leaves the queue then, and its handler runs at once to say so.

    The handler's signature gains a `request: gr.Request` parameter, which Gradio fills in (and which
    is passed on to a handler that has one).
    """
    signature = inspect.signature(fn)
    takes_request = "request" in signature.parameters

    def describe(arguments: Mapping[str, Any]) -> tuple[str, float]:
        try:
            units = float(work(arguments)) if work else 1.0
        except (TypeError, ValueError):  # a bad setting: the handler refuses it by name in its turn
            units = 1.0
        return f"{kind}:{arguments.get('model') or default}", units

    def duration(*args: Any, **kwargs: Any) -> int:
        return gpu_seconds(serving.queue.estimate(*describe(signature.bind(*args, **kwargs).arguments)))

    run_on_gpu = on_gpu(fn, duration)

    @functools.wraps(fn)
    def in_turn(*args: Any, **kwargs: Any) -> Iterator[Any]:
        arguments = with_request.bind(*args, **kwargs).arguments
        request = arguments["request"] if takes_request else arguments.pop("request", None)
        call = signature.bind(**arguments)
        try:
            together = (kind, *(batch_part(call.arguments.get(name)) for name in batch)) if batch else None
            ticket = serving.queue.join(serving.client(request), *describe(call.arguments), batch_key=together)
        except (QueueFull, OverQuota) as refusal:
            yield from refuse(refusal)
            return
        try:
            granted = serving.queue.wait(ticket, timeout=0)
            while not granted and not (stopped is not None and stopped(request)):
                yield show(serving.queue.place(ticket).describe())
                granted = serving.queue.wait(ticket, WAIT_UPDATE_SECONDS)
            if not granted:  # stopped while waiting: the handler ends at once, without the device
                serving.queue.leave(ticket)
                yield from fn(*call.args, **call.kwargs)
                return
            # Read where the wrapper gathers a batch (in this call, before the handler's first update).
            let_in_together.set(serving.queue.granted_with(ticket))
            yield from run_on_gpu(*call.args, **call.kwargs)
        except OverQuota as refusal:  # went over quota while it waited
            yield from refuse(refusal)
        finally:
            serving.queue.leave(ticket)
            return_freed_memory()

    def refuse(refusal: Exception) -> Iterator[Any]:
        if not page:
            raise gr.Error(str(refusal), print_exception=False)
        yield refused(str(refusal)) if refused else show(f"Not done: {refusal}")

    request_parameter = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
    with_request = signature if takes_request else signature.replace(parameters=[*signature.parameters.values(), request_parameter])
    in_turn.__signature__ = with_request  # type: ignore[attr-defined]
    try:
        hints = get_type_hints(fn)
    except (NameError, TypeError):
        hints = {}
    in_turn.__annotations__ = {**hints, "request": gr.Request}  # how Gradio knows to pass the request
    return in_turn


def api_endpoint(
    serving: Serving,
    fn: Callable[..., Iterator[Any]],
    inputs: list[Any],
    outputs: list[Any],
    api_name: str,
    kind: str,
    work: Work | None = None,
    default: str | None = None,
    batch: Sequence[str] = (),
    status: int = -1,
) -> None:
    """A named API and MCP endpoint that takes its turn in the device's fair queue; nothing on the page
    triggers it. Output `status` (default: the last) is its status line, where waiting requests see
    their place.

    Its inputs are the API's own (the main input, then `api_*` parameters), so API callers get one
    vocabulary and the chosen model's defaults, while the page keeps its own controls and events.
    """
    handler = on_device(
        serving, fn, kind, status_update(len(outputs), status), page=False, work=work, default=default, batch=batch
    )
    gr.Button(visible=False).click(handler, inputs, outputs, api_name=api_name, **DEVICE_EVENT)



def api_model(wrappers: Mapping[str, Wrapper]) -> gr.Dropdown:
    """The API's `model` parameter: a catalogue id; left out, the tab's default model."""
    return api_choice("model", list(wrappers))


def setting_slider(wrapper: Wrapper, name: str, label: str, step: float, maximum: float | None = None) -> gr.Slider:
    """A slider whose range comes from the wrapper's settings schema and whose value is the entry's default."""
    low, high = _bounds(type(wrapper.defaults), name)
    return named_errors(
        gr.Slider(
            minimum=low if low is not None else 0,
            maximum=maximum if maximum is not None else high,
            value=getattr(wrapper.defaults, name),
            step=step,
            label=label,
            info=type(wrapper.defaults).model_fields[name].description,
        )
    )


def settings_panel(label: str = "Settings") -> gr.Accordion:
    """A tab's settings, under its run button and beside the output on a wide screen; folded on a phone.

    The page tells the server its width when it loads, and the panel's `open` is set from it: an update
    through Gradio, so the panel stays as set when its tab is shown later (a click in the page's own
    script would be undone when Gradio draws the tab).
    """
    panel = gr.Accordion(label, open=True)
    width = gr.Number(visible=False)
    gr.on(
        None,
        lambda px: gr.Accordion(open=px is None or px >= PHONE_WIDTH),
        width,
        panel,
        js="() => window.innerWidth",
        queue=False,
        api_visibility="private",
    )
    return panel


def run_buttons(label: str = "Generate") -> tuple[gr.Button, gr.Button]:
    """The run button and a smaller Stop beside it, enabled only while a run is live (see `show_running`)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", scale=3)
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, interactive=False)  # a quarter, on a phone too
    return run, stop


def running_label(progress: str) -> gr.Button:
    """The run button's label while its run is live, e.g. "Generating… step 3/25"."""
    return gr.Button(value=f"Generating… {progress}".strip())


def show_running(starts: list[Any], run: gr.Button, stop: gr.Button) -> None:
    """While a run is live the run button says so and Stop is enabled (see `show_idle` for its end).

    `starts` are the listeners that start the run (`run.click`, `prompt.submit`, `event.then`). Register
    this before the run itself: the page applies a trigger's listeners in the order they were
    registered, so one registered after a run would wait for the run to end. Both buttons change through
    server updates, so Gradio keeps their state (a change made by the page's own script is undone when
    Gradio next draws them). The run's own yields put step counts in the label.
    """
    for start in starts:
        start(lambda: (running_label(""), gr.Button(interactive=True)), None, [run, stop], queue=False, api_visibility="private")


def idle_buttons(label: str = "Generate") -> tuple[gr.Button, gr.Button]:
    """The run button and Stop when no run is live."""
    return gr.Button(value=label), gr.Button(interactive=False)


def show_idle(runs: list[Any], run: gr.Button, stop: gr.Button, label: str = "Generate") -> None:
    """When a run ends by itself (done or failed), its button is itself again and Stop is disabled. A
    run cancelled by Stop never reaches its `.then`: there Stop's own handler returns `idle_buttons()`."""
    for event in runs:
        event.then(lambda: idle_buttons(label), None, [run, stop], queue=False, api_visibility="private")


def on_stop(stop: gr.Button, runs: list[Any], fn: Callable[..., Any], inputs: Any, outputs: Any) -> None:
    """Stop cancels `runs`, then `fn` writes the stopped state. Not in the same listener: a status update
    the run sent just before it was cancelled can reach the page after that listener's own, and would put
    the live line back over "Stopped at ..."; a `.then` runs once the cancellation is through."""
    stop.click(None, cancels=runs, api_visibility="private").then(fn, inputs, outputs, api_visibility="private")


class StopFlags:
    """Stop for one tab's page runs that keep what they made: one flag per browser session, which the
    run's wrapper checks every step.

    The run then ends itself and sends its own result ("Stopped after 4.0 s of audio", the partial
    clip). Gradio's `cancels` could not: it closes the generator, after which nothing can be sent. A
    Stop clicked while the run still waits in the queue sets the flag too: the run leaves the queue
    (`on_device(stopped=...)`) and says it stopped before it started.
    """

    def __init__(self) -> None:
        self._flags: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, request: gr.Request) -> threading.Event:
        """The flag of the run this request starts (already set if Stop came first)."""
        with self._lock:
            return self._flags.setdefault(request.session_hash or "", threading.Event())

    def stop(self, request: gr.Request) -> None:
        with self._lock:
            self._flags.setdefault(request.session_hash or "", threading.Event()).set()

    def stopped(self, request: gr.Request | None) -> bool:
        """Whether Stop was clicked for this session's run (one waiting in the queue included)."""
        with self._lock:
            flag = self._flags.get(request.session_hash or "") if request is not None else None
        return flag is not None and flag.is_set()

    def end(self, request: gr.Request, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(request.session_hash or "") is flag:
                del self._flags[request.session_hash or ""]


def bring_into_view(triggers: list[Any], elem_id: str) -> None:
    """When a run starts, scroll its output into view (on a phone it sits below the controls); register
    it before the run, as `show_running`."""
    gr.on(
        triggers,
        None,
        js=f"() => document.getElementById('{elem_id}')?.scrollIntoView({{block: 'start'}})",
        api_visibility="private",
    )


def example_file(name: str) -> str:
    """The path of a file shipped for the examples; Gradio serves that folder, and only it, as static files."""
    gr.set_static_paths([EXAMPLES_DIR])
    return str(EXAMPLES_DIR / name)


def examples(rows: list[list[Any]], inputs: list[Any]) -> gr.Examples:
    """Clickable examples that fill `inputs`; Generate then runs them.

    Nothing is cached: a cached run would go round the one device queue, be the same for everyone
    whatever the seed, and write outside the output folder; start-up loads no model either way.
    """
    return gr.Examples(rows, inputs, cache_examples=False, api_visibility="private")

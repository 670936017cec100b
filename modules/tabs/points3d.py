"""3D tab: Point-E from a prompt or from an image, shown in a Model3D viewer, with PLY and GLB downloads,
and optionally a coloured mesh (GLB, OBJ, STL)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from modules.serving import Serving
from modules.tabs.common import (
    DEVICE_EVENT,
    api_endpoint,
    api_file,
    api_model,
    api_number,
    api_text,
    bring_into_view,
    errors_in_place,
    example_file,
    examples,
    model_dropdown,
    model_notes,
    named_errors,
    on_device,
    on_stop,
    pick,
    request_seed,
    run_buttons,
    running_label,
    setting_slider,
    settings_panel,
    idle_buttons,
    show_idle,
    show_running,
    status_update,
    stepped_outputs,
    user_errors,
)
from modules.tabs.history import Made
from modules.wrappers.text_to_3d import PointCloudResult, PointEWrapper, StageStep

STAGE_LABELS = {
    "download": "Downloading the Point-E checkpoints (MB)",
    "base": "Stage 1 of 2: base model",
    "upsample": "Stage 2 of 2: upsampler",
    "mesh": "Mesh: signed distances on the grid (query batches)",
}
FROM_TEXT, FROM_IMAGE = "From text", "From an image"
IMAGE_RUN = "Generate from the image"
#: What the tab offers to try: simple objects (all Point-E knows from text) and one picture of an object.
EXAMPLE_PROMPTS = ["a red motorcycle", "a green armchair", "a traffic cone", "a blue coffee mug"]
EXAMPLE_IMAGES = ["red-ball.png"]

#: A tiny model makes hundreds of steps a second; a bar moved every step would cost more than the steps.
BAR_SECONDS = 0.1


@dataclass(frozen=True)
class Points3DTab:
    """What the bridge to other tabs may touch: the image input and a way to run the image path."""

    image: gr.File
    source: gr.Radio  # FROM_TEXT or FROM_IMAGE
    #: Chains the image-path generation after another event (the Image tab's "Make 3D").
    run_from_image: Callable[[Any], Any]
    made: Made  # for History


def described(settings: Mapping[str, Any]) -> tuple[str, Any]:
    """What a 3D run was asked (for History): the prompt, or the picture's name, and the model of that path."""
    if settings.get("source") == FROM_IMAGE:
        return f"from the picture {Path(str(settings.get('image') or '')).name}", settings.get("image_model")
    return str(settings.get("prompt") or ""), settings.get("model")


def presets(wrapper: PointEWrapper) -> dict[str, int]:
    """Steps-per-stage presets: the entry's own, and a fast preview where it is fewer."""
    official = wrapper.defaults.num_steps
    fast = min(official, wrapper.fast_steps)
    choices = {f"As configured: {official} steps per stage": official}
    if fast < official:
        choices[f"Fast preview: {fast} steps per stage (CPU)"] = fast
    return choices


def initial_steps(wrapper: PointEWrapper) -> int:
    """The fast preset on CPU, where 64 + 64 real-size steps take many minutes; the entry's default elsewhere."""
    return min(presets(wrapper).values()) if wrapper.device == "cpu" else wrapper.defaults.num_steps


def stats_line(result: PointCloudResult, model_name: str) -> str:
    line = (
        f"Done in {result.seconds:.2f} s · {result.steps} steps (both stages) · {result.steps_per_second:.2f} steps/s · "
        f"{len(result.points):,} points · seed {result.seed} · {model_name}"
    )
    if result.mesh is not None:
        line += f" · mesh of {result.mesh.vertices:,} vertices, {result.mesh.faces:,} faces"
    lineage = result.lineage
    if lineage:
        made = [f"from {lineage['source_image']}"]
        if "source_prompt" in lineage:
            made.append(f"prompt “{lineage['source_prompt']}”")
        made += [f"{label} {lineage[key]}" for key, label in (("source_seed", "seed"), ("source_model", "model")) if key in lineage]
        line += " · " + ", ".join(made)
    return line


def status_line(step: StageStep) -> str:
    return f"{STAGE_LABELS[step.stage]}: {step.step} of {step.total}"


#: A live status line, "Stage 1 of 2: base model: 4 of 16 · about 3 s left": (where, count).
LIVE = re.compile(r"^(?P<where>.+): (?P<count>\d+ of \d+)(?: · |$)")
LIVE_STAGES = tuple(STAGE_LABELS.values())


def stopped_line(status: str | None) -> Any:
    """At Stop, the live status line becomes the run's result: "Stopped at step 4 of 16 (Stage 1 of 2:
    base model)"; any other line, such as a finished run's, stays."""
    live = LIVE.match(status or "")
    if not live or not live["where"].startswith(LIVE_STAGES):
        return gr.skip()
    return f"Stopped at step {live['count']} ({live['where']})"


def page_updates(updates: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """A run's updates for the page, then the run button's label ("Generating… stage 1 of 2: 4 of 16").

    The first step clears the previous run's cloud, mesh and files, so they never pass for this one's;
    a failure before it (bad input) leaves them.
    """
    cleared = False
    for cloud, mesh, files, seed, status in updates:
        live = LIVE.match(status) if isinstance(status, str) else None
        label: Any = gr.skip()
        if live and live["where"].startswith(LIVE_STAGES):
            where = live["where"].split(":")[0]  # "Stage 1 of 2", "Mesh", "Downloading the Point-E checkpoints (MB)"
            label = running_label(f"{where.lower()}, step {live['count']}" if where.startswith("Stage") else where)
            if not cleared:
                cloud, mesh, files, cleared = None, None, None, True
        yield cloud, mesh, files, seed, status, label


def build_points3d_tab(wrappers: Mapping[str, PointEWrapper], default: str, serving: Serving) -> Points3DTab:
    text_wrappers = {k: w for k, w in wrappers.items() if w.condition == "text"}
    image_wrappers = {k: w for k, w in wrappers.items() if w.condition == "image"}
    text_default = default if default in text_wrappers else next(iter(text_wrappers), None)
    image_default = default if default in image_wrappers else next(iter(image_wrappers), None)
    first = wrappers[default]
    source = gr.Radio(
        [FROM_TEXT, FROM_IMAGE], value=FROM_TEXT if first.condition == "text" else FROM_IMAGE,
        label="Make a point cloud", interactive=bool(text_wrappers) and bool(image_wrappers),
    )
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            # Each path has its own Generate with a Stop beside it; a Stop ends its own path's run.
            with gr.Group(visible=first.condition == "text") as text_group:
                model = model_dropdown(text_wrappers, text_default) if text_wrappers else gr.State(None)
                prompt = gr.Textbox(label="Prompt", lines=1, max_lines=4, placeholder="a red motorcycle")
                run, stop = run_buttons()
                run.interactive = bool(text_wrappers)
                examples([[text] for text in EXAMPLE_PROMPTS], [prompt])
            with gr.Group(visible=first.condition == "image") as image_group:
                image_model = (
                    model_dropdown(image_wrappers, image_default, label="Image model") if image_wrappers else gr.State(None)
                )
                # A file box, not gr.Image: our loader, not Gradio's, then names what is wrong with a bad upload.
                image = gr.File(label="Image", file_types=["image"], type="filepath", height=120)
                run_image, stop_image = run_buttons(IMAGE_RUN)
                run_image.interactive = bool(image_wrappers)
                examples([[example_file(name)] for name in EXAMPLE_IMAGES], [image])
            notes = gr.Markdown(model_notes(first))
            with settings_panel():
                preset = gr.Radio(
                    list(presets(first)), value=None, label="Preset", info="sets the steps below", interactive=True
                )
                steps = setting_slider(first, "num_steps", "Steps per stage", step=1)
                steps.value = initial_steps(first)
                guidance = setting_slider(first, "guidance", "Guidance (base stage)", step=0.5)
                with gr.Row(equal_height=True):
                    seed = named_errors(gr.Number(value=0, label="Seed", precision=0, minimum=0, maximum=2**32 - 1))
                    randomise = gr.Checkbox(value=True, label="Randomise seed")
                    seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
                with gr.Row(equal_height=True):
                    make_mesh = gr.Checkbox(value=False, label="Make a mesh", info="SDF model + marching cubes; GLB, OBJ, STL")
                    mesh_grid = setting_slider(first, "mesh_grid", "Mesh grid (samples per axis)", step=8)
        with gr.Column(scale=6, min_width=320, elem_id="pointcloud-output"):
            viewer = gr.Model3D(label="Point cloud", display_mode="point_cloud", clear_color=(0.1, 0.1, 0.12, 1.0))
            mesh_viewer = gr.Model3D(label="Mesh (with Make a mesh)", display_mode="solid", clear_color=(0.1, 0.1, 0.12, 1.0))
            stats = gr.Markdown()
            downloads = gr.File(label="Downloads: PLY, GLB (and the mesh)", file_count="multiple", interactive=False)

    def run_wrapper(wrapper: PointEWrapper, condition: Any, settings: dict[str, Any], progress: gr.Progress) -> Iterator[Any]:
        def with_bar(items: Iterable[Any]) -> Iterator[Any]:
            """One progress bar per stage, moved at most every `BAR_SECONDS` and at each stage's end."""
            shown = float("-inf")
            for item in items:
                if isinstance(item, StageStep) and (item.step == item.total or time.monotonic() - shown >= BAR_SECONDS):
                    shown = time.monotonic()
                    unit = {"download": "MB", "mesh": "batches"}.get(item.stage, "steps")
                    progress((item.step, item.total), desc=STAGE_LABELS[item.stage], unit=unit)
                yield item

        def finish(result: PointCloudResult) -> tuple[Any, ...]:
            files = [str(result.ply), str(result.glb)]
            mesh = None
            if result.mesh is not None:
                files += [str(p) for p in result.mesh.paths]
                mesh = str(result.mesh.glb)
            return str(result.ply), mesh, files, result.seed, stats_line(result, wrapper.entry.name)

        yield from stepped_outputs(
            with_bar(wrapper.generate(condition, **settings)), outputs=5, status=status_line, finish=finish
        )

    def settings_of(seed: float | None, steps: float | None, guidance: float | None, make_mesh: bool | None, mesh_grid: float | None) -> dict[str, Any]:
        return {"guidance": guidance, "num_steps": steps, "seed": seed, "make_mesh": make_mesh, "mesh_grid": mesh_grid}

    @user_errors
    def generate_3d(
        prompt: str,
        model: str | None = None,
        seed: int = -1,
        steps: int | None = None,
        guidance: float | None = None,
        make_mesh: bool = False,
        mesh_grid: int | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        """Generate a coloured 3D point cloud from a text prompt with Point-E; returns PLY and GLB files and,
        with make_mesh, a coloured mesh (GLB, OBJ, STL).

        Args:
            prompt: the object to make, e.g. "a red motorcycle".
            model: a model id of this server's text-to-3D catalogue; left out, the default model.
            seed: -1 for a random seed.
            steps: Heun steps per stage (base, then upsampler); left out, the model's default (64 official).
            guidance: classifier-free guidance of the base stage; left out, the model's default.
            make_mesh: also turn the cloud into a mesh (SDF model + marching cubes).
            mesh_grid: marching-cubes samples per axis; left out, the model's default (128 official).
        """
        wrapper = pick(text_wrappers, model, text_default)
        yield from run_wrapper(wrapper, prompt, settings_of(seed, steps, guidance, make_mesh, mesh_grid), progress)

    @user_errors
    def generate_3d_from_image(
        image: str,
        model: str | None = None,
        seed: int = -1,
        steps: int | None = None,
        guidance: float | None = None,
        make_mesh: bool = False,
        mesh_grid: int | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        """Generate a coloured 3D point cloud from a picture of one object with Point-E (its strongest path);
        returns PLY and GLB files and, with make_mesh, a coloured mesh (GLB, OBJ, STL). A PNG made by the
        Image tab passes its prompt, seed and model on to the 3D files.

        Args:
            image: the picture, ideally one object on a plain background.
            model: a model id of this server's image-to-3D catalogue; left out, the default model.
            seed: -1 for a random seed.
            steps: Heun steps per stage (base, then upsampler); left out, the model's default (64 official).
            guidance: classifier-free guidance of both stages; left out, the model's default.
            make_mesh: also turn the cloud into a mesh (SDF model + marching cubes).
            mesh_grid: marching-cubes samples per axis; left out, the model's default (128 official).
        """
        wrapper = pick(image_wrappers, model, image_default)
        yield from run_wrapper(wrapper, image, settings_of(seed, steps, guidance, make_mesh, mesh_grid), progress)

    def from_page(generate: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        """The page's handler of one path (`generate_3d` or `generate_3d_from_image`): the page's controls in,
        the page's updates out."""

        def generate_on_page(
            condition: str, model: str, guidance: float, steps: float, seed: float | None, randomise: bool,
            make_mesh: bool, mesh_grid: float, progress: gr.Progress = gr.Progress(),
        ) -> Iterator[Any]:  # fmt: skip
            run = generate(condition, model, request_seed(seed, randomise), steps, guidance, make_mesh, mesh_grid, progress)
            yield from page_updates(errors_in_place(run, outputs=5))

        return generate_on_page

    def api_settings(wrapper: PointEWrapper) -> list[Any]:
        """The API's optional parameters after `model`, in the handlers' order."""
        return [
            api_number("seed", wrapper, value=-1),
            api_number("steps", wrapper, "num_steps"),
            api_number("guidance", wrapper),
            gr.Checkbox(value=False, label="make_mesh", visible=False),
            api_number("mesh_grid", wrapper),
        ]

    def work(arguments: Mapping[str, Any]) -> float:
        """Steps per stage: what a run's time grows with."""
        return arguments.get("steps") or wrappers.get(arguments.get("model"), first).defaults.num_steps

    outputs = [viewer, mesh_viewer, downloads, seed_used, stats]
    show_running([run.click, prompt.submit], run, stop)
    show_running([run_image.click], run_image, stop_image)
    bring_into_view([run.click, prompt.submit, run_image.click], "pointcloud-output")

    def stopped(label: str) -> Callable[[str | None], tuple[Any, ...]]:
        """Stop's own updates: the status says where the run stopped, and the path's buttons are idle again
        (a cancelled run's `.then` never fires)."""
        return lambda status: (stopped_line(status), *idle_buttons(label))

    show = status_update(len(outputs) + 1, 4)  # the page's outputs end with the run button
    from_text_page = on_device(serving, from_page(generate_3d), "3d", show, work=work, default=text_default)
    from_image_page = on_device(serving, from_page(generate_3d_from_image), "3d", show, work=work, default=image_default)
    event = gr.on(
        [run.click, prompt.submit],
        from_text_page,
        [prompt, model, guidance, steps, seed, randomise, make_mesh, mesh_grid],
        [*outputs, run],
        api_visibility="private",
        **DEVICE_EVENT,
    )
    image_inputs = [image, image_model, guidance, steps, seed, randomise, make_mesh, mesh_grid]
    image_events = [run_image.click(from_image_page, image_inputs, [*outputs, run_image], api_visibility="private", **DEVICE_EVENT)]
    runs = [event, *image_events]  # for History; the bridge's "Make 3D" adds its chained run
    if text_wrappers:
        endpoint_inputs = [api_text("prompt"), api_model(text_wrappers), *api_settings(wrappers[text_default])]
        api_endpoint(
            serving, generate_3d, endpoint_inputs, outputs, api_name="generate_3d", kind="3d", work=work, default=text_default
        )
    if image_wrappers:
        endpoint_inputs = [api_file("image"), api_model(image_wrappers), *api_settings(wrappers[image_default])]
        api_endpoint(
            serving, generate_3d_from_image, endpoint_inputs, outputs, api_name="generate_3d_from_image", kind="3d",
            work=work, default=image_default,
        )  # fmt: skip

    def run_from_image(after: Any) -> Any:
        show_running([after.then], run_image, stop_image)
        chained = after.then(from_image_page, image_inputs, [*outputs, run_image], api_visibility="private", **DEVICE_EVENT)
        image_events.append(chained)
        runs.append(chained)
        show_idle([chained], run_image, stop_image, label=IMAGE_RUN)
        on_stop(stop_image, [chained], stopped(IMAGE_RUN), stats, [stats, run_image, stop_image])
        return chained

    show_idle([event], run, stop)
    show_idle(image_events, run_image, stop_image, label=IMAGE_RUN)
    # Stop cancels this browser's own events; closing a generator sets its stop flag and ends the lease.
    on_stop(stop, [event], stopped("Generate"), stats, [stats, run, stop])
    on_stop(stop_image, image_events, stopped(IMAGE_RUN), stats, [stats, run_image, stop_image])

    def current(source_value: str, text_model: str | None, picture_model: str | None) -> PointEWrapper:
        return pick(wrappers, text_model if source_value == FROM_TEXT else picture_model)

    preset.input(
        lambda label, *models: presets(current(*models)).get(label), [preset, source, model, image_model], steps,
        api_visibility="private",
    )

    def show_choice(source_value: str, text_model: str | None, picture_model: str | None) -> tuple[Any, ...]:
        wrapper = current(source_value, text_model, picture_model)
        return (
            gr.Group(visible=source_value == FROM_TEXT),
            gr.Group(visible=source_value == FROM_IMAGE),
            model_notes(wrapper),
            gr.Radio(choices=list(presets(wrapper)), value=None),
        )

    def adopt_defaults(source_value: str, text_model: str | None, picture_model: str | None) -> tuple[Any, ...]:
        wrapper = current(source_value, text_model, picture_model)
        return initial_steps(wrapper), wrapper.defaults.guidance

    # The view follows the path and model however they are set, the defaults only a person's pick
    # (History's Re-run sets them together with its own settings).
    choosers = [source, model, image_model]
    for chooser in choosers:
        if isinstance(chooser, (gr.Radio, gr.Dropdown)):
            chooser.change(show_choice, choosers, [text_group, image_group, notes, preset], api_visibility="private")
            chooser.input(adopt_defaults, choosers, [steps, guidance], api_visibility="private")
    settings = {
        "source": source, "prompt": prompt, "model": model, "image": image, "image_model": image_model,
        "steps": steps, "guidance": guidance, "seed": seed, "randomise": randomise, "make_mesh": make_mesh,
        "mesh_grid": mesh_grid,
    }  # fmt: skip
    made = Made(runs, settings, files=downloads, stats=stats, seed_used=seed_used, describe=described)
    return Points3DTab(image=image, source=source, run_from_image=run_from_image, made=made)

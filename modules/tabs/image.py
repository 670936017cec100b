"""Image tab: text-to-image over the diffusers wrappers, with a gallery of PNGs that carry their parameters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.serving import Serving
from modules.tabs.common import (
    DEVICE_EVENT,
    api_choice,
    api_endpoint,
    api_model,
    api_number,
    api_text,
    bring_into_view,
    errors_in_place,
    examples,
    follow_model,
    model_dropdown,
    model_notes,
    named_errors,
    on_stop,
    on_device,
    pick,
    request_seed,
    run_buttons,
    running_label,
    shared_pass,
    setting_slider,
    settings_panel,
    idle_buttons,
    show_idle,
    show_running,
    step_progress,
    status_update,
    stepped_outputs,
    user_errors,
)
from modules.tabs.history import Made
from modules.wrappers.text_to_image import SCHEDULERS, DiffusersTextToImage, ImageResult

SCHEDULER_CHOICES = [("Model default", "default"), ("Euler", "euler"), ("Euler a", "euler-a"), ("DPM++ 2M", "dpm++-2m"), ("DDIM", "ddim")]
assert [value for _, value in SCHEDULER_CHOICES] == list(SCHEDULERS)


DENOISING = "Denoising: step"
#: Prompts the tab offers to try (a click fills the prompt).
EXAMPLE_PROMPTS = [
    "a lighthouse on a rocky cliff at dusk, oil painting",
    "a red fox in fresh snow, morning light, photograph",
    "a cosy reading room with plants, isometric 3D render, pastel colours",
    "a bowl of ramen on a wooden table, watercolour",
]
#: Requests that agree on these run together, in one denoising pass, when they wait at the same time.
BATCH_BY = ("model", "steps", "guidance", "width", "height", "scheduler")


def stopped_line(status: str | None) -> Any:
    """At Stop, the live status line becomes the run's result: "Denoising: step 3 of 25 · about 4 s left"
    -> "Stopped at step 3 of 25" (any other line, such as a finished run's, stays)."""
    if status and status.startswith(DENOISING):
        return status.replace(DENOISING, "Stopped at step", 1).split(" · ")[0]
    return gr.skip()


@dataclass(frozen=True)
class ImageTab:
    """What the bridge to other tabs may touch: the prompt, the gallery, its selection and two buttons."""

    prompt: gr.Textbox
    gallery: gr.Gallery
    selected: gr.State  # index of the gallery image the user clicked last (None: the first)
    caption_button: gr.Button
    make_3d_button: gr.Button
    made: Made  # for History


def notes(wrapper: DiffusersTextToImage) -> str:
    safety = f"Safety checker: {'on' if wrapper.safety_required() else 'off'}"
    return model_notes(wrapper, (safety, wrapper.safety_note()))


def stats_line(result: ImageResult, model_name: str) -> str:
    withheld = f" · note: {result.withheld} image(s) withheld by the safety checker" if result.withheld else ""
    seeds = ", ".join(str(image.seed) for image in result.images) or "–"
    return (
        f"Done in {result.seconds:.2f} s · {result.steps} steps · {result.steps_per_second:.2f} steps/s · "
        f"{result.sampler} · seed {seeds} · {model_name}{shared_pass(result.batch)}{withheld}"
    )


def build_image_tab(wrappers: Mapping[str, DiffusersTextToImage], default: str, serving: Serving) -> ImageTab:
    first = wrappers[default]

    def work(arguments: Mapping[str, Any]) -> float:
        """Steps times images times pixels (in 512x512 images): what a run's time grows with."""
        d = wrappers.get(arguments.get("model"), first).defaults
        size = (arguments.get("width") or d.width) * (arguments.get("height") or d.height) / 512**2
        return (arguments.get("steps") or d.num_steps) * (arguments.get("batch") or d.batch) * size
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            model = model_dropdown(wrappers, default)
            model_info = gr.Markdown(notes(first))
            prompt = gr.Textbox(
                label="Prompt", lines=1, max_lines=6, placeholder="an astronaut riding a horse, watercolour (Shift+Enter: new line)"
            )
            negative = gr.Textbox(label="Negative prompt", lines=1, info=type(first.defaults).model_fields["negative_prompt"].description)
            run, stop = run_buttons()
            examples([[text] for text in EXAMPLE_PROMPTS], [prompt])
            with settings_panel():
                with gr.Row():
                    steps = setting_slider(first, "num_steps", "Steps", step=1)
                    guidance = setting_slider(first, "guidance", "Guidance (CFG)", step=0.5)
                scheduler = gr.Dropdown(SCHEDULER_CHOICES, value=first.defaults.scheduler, label="Scheduler")
                with gr.Row():
                    side = first.host.max_image_side
                    width = setting_slider(first, "width", "Width", step=8, maximum=side)
                    height = setting_slider(first, "height", "Height", step=8, maximum=side)
                batch = setting_slider(first, "batch", "Images", step=1)
                with gr.Row(equal_height=True):
                    seed = named_errors(gr.Number(value=0, label="Seed", precision=0, minimum=0, maximum=2**32 - 1))
                    randomise = gr.Checkbox(value=True, label="Randomise seed")
        with gr.Column(scale=6, min_width=320, elem_id="image-output"):
            gallery = gr.Gallery(
                label="Images", columns=2, height=480, object_fit="contain", format="png", type="filepath", interactive=False
            )
            stats = gr.Markdown()
            with gr.Row():
                seed_used = gr.Number(label="Seed used", precision=0, interactive=False, visible=False)
                caption_button = gr.Button("Caption this", size="sm")
                make_3d_button = gr.Button("Make 3D", size="sm")
            downloads = gr.File(label="Download PNGs (parameters inside)", file_count="multiple", interactive=False, visible=False)
    selected = gr.State(None)

    @user_errors
    def generate_image(
        prompt: str,
        negative_prompt: str | None = None,
        model: str | None = None,
        seed: int = -1,
        steps: int | None = None,
        guidance: float | None = None,
        width: int | None = None,
        height: int | None = None,
        batch: int | None = None,
        scheduler: str | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        """Generate images from a text prompt with a Stable Diffusion-family model; returns PNG files whose
        `parameters` text chunk records every setting, as AUTOMATIC1111 writes it.

        Args:
            prompt: what the image should show.
            negative_prompt: what it should not show.
            model: a model id of this server's Image catalogue; left out, the default model.
            seed: -1 for a random seed; image i of a batch uses seed + i.
            steps: denoising steps; left out, the model's default (and likewise every setting below).
            guidance: classifier-free guidance scale (0 turns it off).
            width: image width in pixels, a multiple of 8.
            height: image height in pixels, a multiple of 8.
            batch: how many images to make.
            scheduler: default, euler, euler-a, dpm++-2m or ddim.
        """
        wrapper = pick(wrappers, model, default)
        settings = {
            "negative_prompt": negative_prompt,
            "num_steps": steps,
            "guidance": guidance,
            "width": width,
            "height": height,
            "batch": batch,
            "scheduler": scheduler,
            "seed": seed,
        }

        def finish(result: ImageResult) -> tuple[Any, ...]:
            paths = [str(image.path) for image in result.images]
            gallery_items = [(path, f"seed {image.seed}") for path, image in zip(paths, result.images)]
            return gallery_items, paths, result.seed, stats_line(result, wrapper.entry.name)

        yield from stepped_outputs(
            wrapper.generate(prompt, on_step=step_progress(progress, "Denoising"), **settings),
            outputs=4,
            status=lambda step: f"{DENOISING} {step.step} of {step.total}",
            finish=finish,
        )

    def generate_from_page(
        prompt: str,
        negative_prompt: str,
        model: str,
        steps: float,
        guidance: float,
        width: float,
        height: float,
        batch: float,
        scheduler: str,
        seed: float | None,
        randomise: bool,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        run = generate_image(
            prompt, negative_prompt, model, request_seed(seed, randomise), steps, guidance, width, height, batch, scheduler, progress
        )
        cleared = False
        for gallery_items, files, used, status in errors_in_place(run, outputs=4):
            label: Any = gr.skip()
            if isinstance(files, list):  # the result: the download panel and seed appear only now
                files, used = gr.File(value=files, visible=True), gr.Number(value=used, visible=True)
            elif isinstance(status, str) and status.startswith(DENOISING):
                label = running_label(status.removeprefix("Denoising: ").split(" · ")[0])
                if not cleared:  # the first step: the previous run's images must not pass for this one's
                    gallery_items, files, used = None, gr.File(value=None, visible=False), gr.Number(visible=False)
                    cleared = True
            yield gallery_items, files, used, status, None, label  # a new gallery: forget which image was selected

    outputs = [gallery, downloads, seed_used, stats]
    show_running([run.click, prompt.submit], run, stop)
    bring_into_view([run.click, prompt.submit], "image-output")
    event = gr.on(
        [run.click, prompt.submit],
        on_device(serving, generate_from_page, "image", status_update(6, 3), work=work, default=default, batch=BATCH_BY),
        [prompt, negative, model, steps, guidance, width, height, batch, scheduler, seed, randomise],
        [*outputs, selected, run],
        api_visibility="private",
        **DEVICE_EVENT,
        show_progress_on=gallery,
    )
    api_endpoint(
        serving,
        generate_image,
        [
            api_text("prompt"),
            api_text("negative_prompt"),
            api_model(wrappers),
            api_number("seed", first, value=-1),
            api_number("steps", first, "num_steps"),
            api_number("guidance", first),
            api_number("width", first, maximum=side),
            api_number("height", first, maximum=side),
            api_number("batch", first),
            api_choice("scheduler", list(SCHEDULERS)),
        ],
        outputs,
        api_name="generate_image",
        kind="image",
        work=work,
        default=default,
        batch=BATCH_BY,
    )
    show_idle([event], run, stop)
    on_stop(stop, [event], lambda status: (stopped_line(status), *idle_buttons()), stats, [stats, run, stop])

    def remember(evt: gr.SelectData) -> int:
        return evt.index

    gallery.select(remember, None, selected, api_visibility="private")

    shown_defaults = {"num_steps": steps, "guidance": guidance, "width": width, "height": height, "scheduler": scheduler}
    follow_model(model, wrappers, model_info, shown_defaults, notes_of=notes)
    settings = {
        "prompt": prompt, "negative_prompt": negative, "model": model, "steps": steps, "guidance": guidance,
        "width": width, "height": height, "batch": batch, "scheduler": scheduler, "seed": seed, "randomise": randomise,
    }  # fmt: skip
    return ImageTab(
        prompt=prompt,
        gallery=gallery,
        selected=selected,
        caption_button=caption_button,
        make_3d_button=make_3d_button,
        made=Made(runs=[event], settings=settings, files=downloads, stats=stats, seed_used=seed_used),
    )

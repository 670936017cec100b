"""Image tab: text-to-image over the diffusers wrappers, with a gallery of PNGs that carry their parameters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.tabs.common import (
    DEVICE_QUEUE,
    model_dropdown,
    model_notes,
    pick,
    request_seed,
    setting_slider,
    step_progress,
    stepped_outputs,
    user_errors,
)
from modules.wrappers.text_to_image import SCHEDULERS, DiffusersTextToImage, ImageResult

SCHEDULER_CHOICES = [("Model default", "default"), ("Euler", "euler"), ("Euler a", "euler-a"), ("DPM++ 2M", "dpm++-2m"), ("DDIM", "ddim")]
assert [value for _, value in SCHEDULER_CHOICES] == list(SCHEDULERS)


@dataclass(frozen=True)
class ImageTab:
    """What the bridge to other tabs may touch: the prompt, the gallery, its selection and two buttons."""

    prompt: gr.Textbox
    gallery: gr.Gallery
    selected: gr.State  # index of the gallery image the user clicked last (None: the first)
    caption_button: gr.Button
    make_3d_button: gr.Button


def notes(wrapper: DiffusersTextToImage) -> str:
    return model_notes(wrapper) + "\n\n" + wrapper.safety_note()


def stats_line(result: ImageResult, model_name: str) -> str:
    withheld = f" · ⚠️ {result.withheld} image(s) withheld by the safety checker" if result.withheld else ""
    seeds = ", ".join(str(image.seed) for image in result.images) or "–"
    return (
        f"⏱ {result.seconds:.2f} s · {result.steps} steps · {result.steps_per_second:.2f} steps/s · "
        f"{result.sampler} · seed {seeds} · {model_name}{withheld}"
    )


def build_image_tab(wrappers: Mapping[str, DiffusersTextToImage], default: str) -> ImageTab:
    first = wrappers[default]
    with gr.Row():
        model = model_dropdown(wrappers, default)
    model_info = gr.Markdown(notes(first))
    with gr.Row(equal_height=True):
        with gr.Column(scale=4):
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="an astronaut riding a horse, watercolour")
            negative = gr.Textbox(label="Negative prompt", lines=1, info=type(first.defaults).model_fields["negative_prompt"].description)
        with gr.Column(scale=1, min_width=160):
            run = gr.Button("Generate", variant="primary")
            stop = gr.Button("Stop", variant="stop")
    with gr.Accordion("Settings", open=True):
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
            seed = gr.Number(value=0, label="Seed", precision=0, minimum=0, maximum=2**32 - 1)
            randomise = gr.Checkbox(value=True, label="Randomise seed")
            seed_used = gr.Number(label="Seed used", precision=0, interactive=False)
    gallery = gr.Gallery(label="Images", columns=4, height="auto", format="png", type="filepath", interactive=False)
    stats = gr.Markdown()
    with gr.Row():
        caption_button = gr.Button("📝 Caption this", size="sm")
        make_3d_button = gr.Button("🧊 Make 3D", size="sm")
        downloads = gr.File(label="Download PNGs (parameters inside)", file_count="multiple", interactive=False)
    selected = gr.State(None)

    @user_errors
    def generate(
        prompt_text: str,
        negative_prompt: str,
        model_id: str,
        num_steps: float,
        guidance_scale: float,
        image_width: float,
        image_height: float,
        images: float,
        scheduler_name: str,
        seed_value: float | None,
        random_seed: bool,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        wrapper = pick(wrappers, model_id)
        settings = {
            "negative_prompt": negative_prompt,
            "num_steps": num_steps,
            "guidance": guidance_scale,
            "width": image_width,
            "height": image_height,
            "batch": images,
            "scheduler": scheduler_name,
            "seed": request_seed(seed_value, random_seed),
        }

        def finish(result: ImageResult) -> tuple[Any, ...]:
            paths = [str(image.path) for image in result.images]
            gallery_items = [(path, f"seed {image.seed}") for path, image in zip(paths, result.images)]
            return gallery_items, paths, result.seed, None, stats_line(result, wrapper.entry.name)

        yield from stepped_outputs(
            wrapper.generate(prompt_text, on_step=step_progress(progress, "Denoising"), **settings),
            outputs=5,
            status=lambda step: f"Denoising: step {step.step} of {step.total}",
            finish=finish,
        )

    event = gr.on(
        [run.click, prompt.submit],
        generate,
        [prompt, negative, model, steps, guidance, width, height, batch, scheduler, seed, randomise],
        [gallery, downloads, seed_used, selected, stats],
        api_name="generate_image",
        concurrency_id=DEVICE_QUEUE,
    )
    stop.click(None, cancels=[event], api_visibility="private")

    def remember(evt: gr.SelectData) -> int:
        return evt.index

    gallery.select(remember, None, selected, api_visibility="private")

    def adopt_defaults(model_id: str) -> tuple[Any, ...]:
        wrapper = pick(wrappers, model_id)
        d = wrapper.defaults
        return notes(wrapper), d.num_steps, d.guidance, d.width, d.height, d.scheduler

    model.change(
        adopt_defaults, model, [model_info, steps, guidance, width, height, scheduler], api_visibility="private"
    )
    return ImageTab(
        prompt=prompt, gallery=gallery, selected=selected, caption_button=caption_button, make_3d_button=make_3d_button
    )

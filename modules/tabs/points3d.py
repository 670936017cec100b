"""3D tab: Point-E text-to-point-cloud, shown in a Model3D viewer, with PLY and GLB downloads."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import gradio as gr

from modules.tabs.common import (
    DEVICE_QUEUE,
    api_endpoint,
    api_model,
    api_number,
    api_text,
    model_dropdown,
    model_notes,
    named_errors,
    pick,
    request_seed,
    setting_slider,
    stepped_outputs,
    user_errors,
)
from modules.wrappers.text_to_3d import PointCloudResult, PointEWrapper, StageStep

STAGE_LABELS = {
    "download": "Downloading the Point-E checkpoints (MB)",
    "base": "Stage 1 of 2: base model",
    "upsample": "Stage 2 of 2: upsampler",
}

#: A tiny model makes hundreds of steps a second; a bar moved every step would cost more than the steps.
BAR_SECONDS = 0.1


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
    return (
        f"⏱ {result.seconds:.2f} s · {result.steps} steps (both stages) · {result.steps_per_second:.2f} steps/s · "
        f"{len(result.points):,} points · seed {result.seed} · {model_name}"
    )


def status_line(step: StageStep) -> str:
    return f"{STAGE_LABELS[step.stage]}: {step.step} of {step.total}"


def build_points3d_tab(wrappers: Mapping[str, PointEWrapper], default: str) -> None:
    first = wrappers[default]
    with gr.Row():
        model = model_dropdown(wrappers, default)
    notes = gr.Markdown(model_notes(first))
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red motorcycle")
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
            with gr.Row():
                run = gr.Button("Generate", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column():
            viewer = gr.Model3D(label="Point cloud", display_mode="point_cloud", clear_color=(0.1, 0.1, 0.12, 1.0))
            stats = gr.Markdown()
            downloads = gr.File(label="Download PLY and GLB", file_count="multiple", interactive=False)

    @user_errors
    def generate_3d(
        prompt: str,
        model: str | None = None,
        seed: int = -1,
        steps: int | None = None,
        guidance: float | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        """Generate a coloured 3D point cloud from a text prompt with Point-E; returns PLY and GLB files.

        Args:
            prompt: the object to make, e.g. "a red motorcycle".
            model: a model id of this server's 3D catalogue; left out, the default model.
            seed: -1 for a random seed.
            steps: Heun steps per stage (base, then upsampler); left out, the model's default (64 official).
            guidance: classifier-free guidance of the base stage; left out, the model's default.
        """
        wrapper = pick(wrappers, model, default)
        settings = {"guidance": guidance, "num_steps": steps, "seed": seed}

        def with_bar(items: Iterable[Any]) -> Iterator[Any]:
            """One progress bar per stage, moved at most every `BAR_SECONDS` and at each stage's end."""
            shown = float("-inf")
            for item in items:
                if isinstance(item, StageStep) and (item.step == item.total or time.monotonic() - shown >= BAR_SECONDS):
                    shown = time.monotonic()
                    unit = "MB" if item.stage == "download" else "steps"
                    progress((item.step, item.total), desc=STAGE_LABELS[item.stage], unit=unit)
                yield item

        def finish(result: PointCloudResult) -> tuple[Any, ...]:
            return str(result.ply), [str(result.ply), str(result.glb)], result.seed, stats_line(result, wrapper.entry.name)

        yield from stepped_outputs(
            with_bar(wrapper.generate(prompt, **settings)), outputs=4, status=status_line, finish=finish
        )

    def generate_from_page(
        prompt: str,
        model: str,
        guidance: float,
        steps: float,
        seed: float | None,
        randomise: bool,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        yield from generate_3d(prompt, model, request_seed(seed, randomise), steps, guidance, progress)

    outputs = [viewer, downloads, seed_used, stats]
    event = gr.on(
        [run.click, prompt.submit],
        generate_from_page,
        [prompt, model, guidance, steps, seed, randomise],
        outputs,
        api_visibility="private",
        concurrency_id=DEVICE_QUEUE,
    )
    api_endpoint(
        generate_3d,
        [
            api_text("prompt"),
            api_model(wrappers),
            api_number("seed", first, value=-1),
            api_number("steps", first, "num_steps"),
            api_number("guidance", first),
        ],
        outputs,
        api_name="generate_3d",
    )
    # Stop cancels this browser's own event; closing the generator sets its stop flag and ends the lease.
    stop.click(None, cancels=[event], api_visibility="private")
    preset.input(lambda label, model_id: presets(pick(wrappers, model_id)).get(label), [preset, model], steps, api_visibility="private")

    def adopt_defaults(model_id: str) -> tuple[Any, ...]:
        wrapper = pick(wrappers, model_id)
        return model_notes(wrapper), gr.Radio(choices=list(presets(wrapper)), value=None), initial_steps(wrapper), wrapper.defaults.guidance

    model.change(adopt_defaults, model, [notes, preset, steps, guidance], api_visibility="private")

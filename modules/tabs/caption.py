"""Caption tab: describe an uploaded picture with the captioning wrappers (BLIP and kin)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
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
    example_file,
    examples,
    follow_model,
    on_device,
    status_update,
    model_dropdown,
    model_notes,
    pick,
    shared_pass,
    idle_buttons,
    run_buttons,
    show_idle,
    show_running,
    setting_slider,
    settings_panel,
    step_progress,
    stepped_outputs,
    user_errors,
)
from modules.tabs.history import Made
from modules.wrappers.captioning import CaptionResult, CaptionWrapper

UPLOAD_POLICY = (
    "Any PNG, JPEG, WebP or GIF. Animated images: the first frame is used. EXIF rotation is applied; CMYK, "
    "palette, 16-bit and transparent images are converted to RGB (transparency onto white)."
)


#: Pictures the tab offers to try, each with an optional opening of the caption.
EXAMPLES = [("red-ball.png", ""), ("red-ball.png", "a photograph of")]


@dataclass(frozen=True)
class CaptionTab:
    """What the bridge to other tabs may touch: the upload, the caption and one button."""

    upload: gr.File
    caption: gr.Textbox
    use_button: gr.Button
    made: Made  # for History


def stats_line(result: CaptionResult, model_name: str) -> str:
    notes = f" · note: {'; '.join(result.notes)}" if result.notes else ""
    return (
        f"Done in {result.seconds:.2f} s · {result.tokens} tokens · {result.tokens_per_second:.1f} tokens/s · "
        f"{model_name}{shared_pass(result.batch)}{notes}"
    )


def described(settings: Mapping[str, Any]) -> tuple[str, Any]:
    """What a caption run was asked (for History): the picture, by name (the opening shows with the settings)."""
    return Path(str(settings.get("image") or "")).name, settings.get("model")


#: Captions that agree on these run together, in one forward pass, when they wait at the same time.
BATCH_BY = ("model", "prefix", "decoding", "num_beams", "top_p", "temperature", "max_new_tokens")


def build_caption_tab(wrappers: Mapping[str, CaptionWrapper], default: str, serving: Serving) -> CaptionTab:
    first = wrappers[default]
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            model = model_dropdown(wrappers, default)
            model_info = gr.Markdown(model_notes(first))
            upload = gr.File(label="Image", file_types=["image"], type="filepath", height=120, elem_id="caption-upload")
            gr.Markdown(UPLOAD_POLICY)
            prefix = gr.Textbox(label="Caption starts with (optional)", placeholder="a photograph of")
            run, stop = run_buttons("Caption")
            examples([[example_file(name), opening] for name, opening in EXAMPLES], [upload, prefix])
            with settings_panel():
                decoding = gr.Radio(
                    [("Beam search", "beam"), ("Nucleus sampling", "nucleus")], value=first.defaults.decoding, label="Decoding"
                )
                with gr.Row():
                    beams = setting_slider(first, "num_beams", "Beams", step=1)
                    max_length = setting_slider(first, "max_length", "Max length (tokens)", step=1)
                with gr.Row():
                    top_p = setting_slider(first, "top_p", "Top-p", step=0.01)
                    temperature = setting_slider(first, "temperature", "Temperature", step=0.05)
        with gr.Column(scale=6, min_width=320, elem_id="caption-output"):
            # The upload shows here at once; a caption run replaces it with what the model saw.
            seen = gr.Image(label="What the model sees", interactive=False, height=320)
            caption_text = gr.Textbox(label="Caption", interactive=True, lines=2, buttons=["copy"])
            stats = gr.Markdown()
            use_button = gr.Button("Use as prompt", size="sm")
    upload.change(lambda path: path, upload, seen, api_visibility="private")

    @user_errors
    def caption(
        image: str,
        model: str | None = None,
        prefix: str | None = None,
        decoding: str | None = None,
        num_beams: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        max_new_tokens: int | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        """Describe an image in words (PNG, JPEG, WebP or GIF); returns the image as the model saw it, the
        caption and a stats line.

        Args:
            image: the picture to describe.
            model: a model id of this server's Caption catalogue; left out, the default model.
            prefix: optional start of the caption, e.g. "a photograph of".
            decoding: beam or nucleus; left out, the model's default (and likewise every setting below).
            num_beams: beams for beam search.
            top_p: nucleus sampling threshold.
            temperature: sampling temperature.
            max_new_tokens: longest caption, in tokens.
        """
        wrapper = pick(wrappers, model, default)
        settings = {
            "prefix": prefix,
            "decoding": decoding,
            "num_beams": num_beams,
            "top_p": top_p,
            "temperature": temperature,
            "max_length": max_new_tokens,
        }
        yield from stepped_outputs(
            wrapper.generate(image, on_step=step_progress(progress, "Writing"), **settings),
            outputs=3,
            status=lambda step: f"Writing: token {step.step} of at most {step.total}",
            finish=lambda result: (result.image, result.text, stats_line(result, wrapper.entry.name)),
        )

    def caption_from_page(
        image: str,
        model: str,
        prefix: str,
        decoding: str,
        num_beams: float,
        top_p: float,
        temperature: float,
        max_new_tokens: float,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        run = caption(image, model, prefix, decoding, num_beams, top_p, temperature, max_new_tokens, progress)
        yield from errors_in_place(run, outputs=3)

    outputs = [seen, caption_text, stats]
    show_running([run.click], run, stop)
    bring_into_view([run.click], "caption-output")
    event = run.click(
        on_device(serving, caption_from_page, "caption", status_update(3), default=default, batch=BATCH_BY),
        [upload, model, prefix, decoding, beams, top_p, temperature, max_length],
        outputs,
        api_name="caption_from_page",  # private; the public name belongs to the API endpoint below
        api_visibility="private",
        **DEVICE_EVENT,
        show_progress_on=caption_text,
    )
    api_endpoint(
        serving,
        caption,
        [
            upload,
            api_model(wrappers),
            api_text("prefix"),
            api_choice("decoding", ["beam", "nucleus"]),
            api_number("num_beams", first),
            api_number("top_p", first),
            api_number("temperature", first),
            api_number("max_new_tokens", first, "max_length"),
        ],
        outputs,
        api_name="caption",
        kind="caption",
        default=default,
        batch=BATCH_BY,
    )
    show_idle([event], run, stop, label="Caption")
    stop.click(lambda: idle_buttons("Caption"), None, [run, stop], cancels=[event], api_visibility="private")

    shown_defaults = {
        "decoding": decoding, "num_beams": beams, "top_p": top_p, "temperature": temperature, "max_length": max_length,
    }  # fmt: skip
    follow_model(model, wrappers, model_info, shown_defaults)
    settings = {
        "image": upload, "model": model, "prefix": prefix, "decoding": decoding, "num_beams": beams, "top_p": top_p,
        "temperature": temperature, "max_new_tokens": max_length,
    }  # fmt: skip
    made = Made(
        runs=[event], settings=settings, files=upload, stats=stats, text=caption_text, text_label="Caption",
        describe=described,
    )  # fmt: skip
    return CaptionTab(upload=upload, caption=caption_text, use_button=use_button, made=made)

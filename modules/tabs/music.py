"""Music tab: MusicGen text-to-music that plays while it is generated, then a WAV per prompt."""

from __future__ import annotations

import io
import re
import shutil
from collections.abc import Iterator, Mapping
from typing import Any

import gradio as gr
import numpy as np

from modules.serving import Serving
from modules.tabs.common import (
    DEVICE_EVENT,
    api_endpoint,
    api_model,
    api_number,
    api_text,
    bring_into_view,
    errors_in_place,
    examples,
    model_dropdown,
    model_notes,
    named_errors,
    on_device,
    pick,
    request_seed,
    run_buttons,
    setting_slider,
    settings_panel,
    status_update,
    step_progress,
    user_errors,
)
from modules.tabs.history import Made
from modules.wrappers.text_to_music import MusicProgress, TransformersMusicgen

#: Prompts the tab offers to try, with their durations in seconds (a click fills both).
EXAMPLES = [
    ("lo-fi hip hop beat with warm piano chords", 8),
    ("epic orchestral trailer music with big drums and brass", 10),
    ("calm acoustic folk guitar, bright and warm", 8),
    ("80s synthwave with a driving bassline", 10),
]
#: Gradio encodes streamed audio with FFmpeg; without it the full audio still arrives at the end.
CAN_STREAM = shutil.which("ffmpeg") is not None


def wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    """One streamed chunk as 16-bit WAV (Gradio's streaming player reads that without FFmpeg probing)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def status_line(progress: MusicProgress, model_name: str) -> str:
    if not progress.done:
        return f"Generating: {progress.seconds:.1f} s of {progress.total_seconds:g} s · {model_name}"
    return (
        f"Done: {progress.seconds:.1f} s of audio in {progress.wall_seconds:.1f} s · real-time factor "
        f"{progress.real_time_factor:.2f} (above 1: faster than it plays) · {model_name}"
    )


def stopped_line(status: str | None) -> Any:
    """At Stop, the live status line becomes the run's result: "Generating: 4.0 s of 10 s · …" ->
    "Stopped after 4.0 s of audio" (any other line, such as a finished run's, stays)."""
    made = re.match(r"Generating: ([\d.]+) s of", status or "")
    return f"Stopped after {made.group(1)} s of audio" if made else gr.skip()


def build_music_tab(wrappers: Mapping[str, TransformersMusicgen], default: str, serving: Serving) -> Made:
    first = wrappers[default]

    def work(arguments: Mapping[str, Any]) -> float:
        """Seconds of audio: what a run's time grows with."""
        return arguments.get("duration") or wrappers.get(arguments.get("model"), first).defaults.duration
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            model = model_dropdown(wrappers, default)
            notes = gr.Markdown(model_notes(first))
            prompt = gr.Textbox(
                label=f"Prompt (one per line: up to {first.max_batch} generate together)",
                lines=3,
                placeholder="lo-fi hip hop beat with warm piano chords\nepic orchestral trailer music",
            )
            duration = setting_slider(first, "duration", "Duration (s)", step=1, maximum=min(30, first.host.max_audio_seconds))
            run, stop = run_buttons()
            longest = duration.maximum
            examples([[text, min(seconds, longest)] for text, seconds in EXAMPLES], [prompt, duration])
            with settings_panel():
                with gr.Row():
                    seed = named_errors(gr.Number(0, label="Seed", precision=0, minimum=0, maximum=2**32 - 1))
                    randomize = gr.Checkbox(True, label="New random seed each time")
                top_k = setting_slider(first, "top_k", "Top-k", step=1)
                top_p = setting_slider(first, "top_p", "Top-p", step=0.01)
                temperature = setting_slider(first, "temperature", "Temperature", step=0.05)
                guidance = setting_slider(first, "guidance", "Classifier-free guidance", step=0.1)
        with gr.Column(scale=6, min_width=320, elem_id="music-output"):
            live = gr.Audio(
                label="Live (first prompt)" if CAN_STREAM else "Live playback needs FFmpeg on the server",
                streaming=True,
                autoplay=True,
                interactive=False,
                buttons=[],
            )
            status = gr.Markdown()
            players = [
                gr.Audio(label=f"Prompt {i + 1}", type="filepath", interactive=False, visible=i == 0, buttons=["download"])
                for i in range(first.max_batch)
            ]
            files = gr.File(label="Download WAV", file_count="multiple", interactive=False, visible=False)
    model.change(lambda model_id: model_notes(pick(wrappers, model_id)), model, notes, api_visibility="private")

    def adopt_defaults(model_id: str) -> tuple[Any, ...]:
        d = pick(wrappers, model_id).defaults
        return d.duration, d.top_k, d.top_p, d.temperature, d.guidance

    # Defaults follow a person's pick of model, not History's Re-run, which sets a model with its own settings.
    model.input(adopt_defaults, model, [duration, top_k, top_p, temperature, guidance], api_visibility="private")

    @user_errors
    def generate_music(
        prompt: str,
        model: str | None = None,
        seed: int = -1,
        duration: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        guidance: float | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        """Generate music from a text description with MusicGen; streams the first clip while it is made,
        then returns one WAV file per prompt line.

        Args:
            prompt: the music to make; several lines make several clips together.
            model: a model id of this server's Music catalogue; left out, the default model.
            seed: -1 for a random seed.
            duration: seconds of audio; left out, the model's default (and likewise every setting below).
            top_k: sample from the k most likely tokens (0: no limit).
            top_p: nucleus sampling threshold (0: off).
            temperature: sampling temperature.
            guidance: classifier-free guidance scale.
        """
        wrapper = pick(wrappers, model, default)
        settings = {
            "duration": duration,
            "seed": seed,
            "top_k": top_k,
            "top_p": top_p,
            "temperature": temperature,
            "guidance": guidance,
        }
        frame_rate = 50  # progress in seconds of audio; every MusicGen EnCodec runs at 50 frames/s
        to_bar = step_progress(progress, "seconds of audio", unit="s", scale=1 / frame_rate)

        def on_step(frame: int, frames: int) -> None:
            if frame % 5 == 0 or frame == frames:  # every 0.1 s of audio is plenty for a progress bar
                to_bar(frame, frames)

        quiet = (gr.skip(),) * (len(players) + 1)
        for item in wrapper.generate(prompt, on_step=on_step, **settings):
            if not item.done:
                chunk = wav_bytes(item.chunk[0], item.sampling_rate) if CAN_STREAM else None
                yield (chunk, status_line(item, wrapper.entry.name), item.seed, *quiet)
                continue
            paths = [str(path) for path in item.paths]
            shown = [gr.Audio(value=paths[i] if i < len(paths) else None, visible=i < len(paths)) for i in range(len(players))]
            yield (gr.skip(), status_line(item, wrapper.entry.name), item.seed, *shown, paths)

    def generate_from_page(
        model: str,
        prompt: str,
        duration: float,
        seed: float | None,
        randomise: bool,
        top_k: float,
        top_p: float,
        temperature: float,
        guidance: float,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        run = generate_music(
            prompt, model, request_seed(seed, randomise), duration, top_k, top_p, temperature, guidance, progress
        )
        for *update, files in errors_in_place(run, outputs=len(outputs), status=1):
            # the result: the download panel appears only now
            yield (*update, gr.File(value=files, visible=True) if isinstance(files, list) else files)

    outputs = [live, status, seed, *players, files]
    event = run.click(
        on_device(serving, generate_from_page, "music", status_update(len(outputs), 1), work=work, default=default),
        [model, prompt, duration, seed, randomize, top_k, top_p, temperature, guidance],
        outputs,
        api_visibility="private",
        **DEVICE_EVENT,
        show_progress_on=live,
    )
    bring_into_view([run.click], "music-output")
    api_endpoint(
        serving,
        generate_music,
        [
            api_text("prompt"),
            api_model(wrappers),
            api_number("seed", first, value=-1),
            api_number("duration", first),
            api_number("top_k", first),
            api_number("top_p", first),
            api_number("temperature", first),
            api_number("guidance", first),
        ],
        outputs,
        api_name="generate_music",
        kind="music",
        work=work,
        default=default,
    )
    # Stop cancels this browser's own event; closing the generator sets its stop flag and ends the lease.
    stop.click(stopped_line, status, status, cancels=[event], api_visibility="private")
    settings = {
        "prompt": prompt, "model": model, "duration": duration, "seed": seed, "randomise": randomize, "top_k": top_k,
        "top_p": top_p, "temperature": temperature, "guidance": guidance,
    }  # fmt: skip
    return Made(runs=[event], settings=settings, files=files, stats=status, seed_used=seed)

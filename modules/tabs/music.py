"""Music tab: MusicGen text-to-music that plays while it is generated, then a WAV per prompt."""

from __future__ import annotations

import io
import math
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.data_classes import FileData

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
    follow_model,
    model_dropdown,
    model_notes,
    named_errors,
    on_device,
    pick,
    request_seed,
    run_buttons,
    setting_slider,
    settings_panel,
    shared_pass,
    show_idle,
    show_running,
    running_label,
    status_update,
    step_progress,
    StopFlags,
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
#: Requests whose settings are all equal (their seeds and prompts may differ) can generate in one batch.
BATCH_BY = ("model", "duration", "top_k", "top_p", "temperature", "guidance")
#: Gradio encodes streamed audio with FFmpeg; without it the full audio still arrives at the end.
CAN_STREAM = shutil.which("ffmpeg") is not None


def wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    """One streamed chunk as 16-bit WAV (Gradio's streaming player reads that without FFmpeg probing)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sampling_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


GENERATING = "Generating: "


def served_as_is(player: gr.Audio) -> gr.Audio:
    """A player that serves our WAV files as they are: they are 16-bit PCM, which every browser plays, so
    Gradio's check of each (an ffprobe subprocess, slow on a busy machine) only delays the result.

    The instance's `postprocess` is wrapped rather than the class subclassed (see `named_errors`)."""
    postprocess = player.postprocess

    def as_is(value: Any) -> Any:
        if isinstance(value, str) and value.endswith(".wav"):
            return FileData(path=value, orig_name=Path(value).name)
        return postprocess(value)

    player.postprocess = as_is  # type: ignore[method-assign]
    return player


def status_line(progress: MusicProgress, model_name: str) -> str:
    if progress.stopped:
        return f"Stopped after {progress.seconds:.1f} s of audio · {model_name}"
    if not progress.done:
        left = (progress.total_seconds - progress.seconds) / progress.real_time_factor if progress.seconds else 0
        eta = f" · about {math.ceil(left)} s left" if left > 0 else ""
        return f"{GENERATING}{progress.seconds:.1f} s of {progress.total_seconds:g} s{eta} · {model_name}"
    return (
        f"Done: {progress.seconds:.1f} s of audio in {progress.wall_seconds:.1f} s · real-time factor "
        f"{progress.real_time_factor:.2f} (above 1: faster than it plays) · {model_name}{shared_pass(progress.batch)}"
    )


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
                served_as_is(
                    gr.Audio(
                        label=f"Prompt {i + 1}", type="filepath", interactive=False, visible=i == 0, buttons=["download"],
                        elem_classes="music-player",
                    )
                )
                for i in range(first.max_batch)
            ]
            files = gr.File(label="Download WAV", file_count="multiple", interactive=False, visible=False)
    shown_defaults = {"duration": duration, "top_k": top_k, "top_p": top_p, "temperature": temperature, "guidance": guidance}
    follow_model(model, wrappers, notes, shown_defaults)

    @user_errors
    def music_run(
        prompt: str,
        model: str | None,
        seed: int,
        settings: dict[str, Any],
        progress: gr.Progress,
        interrupt: threading.Event | None = None,
    ) -> Iterator[Any]:
        """The updates of one run: a live chunk and status line per second of audio, then the players."""
        wrapper = pick(wrappers, model, default)
        frame_rate = 50  # progress in seconds of audio; every MusicGen EnCodec runs at 50 frames/s
        on_step = step_progress(progress, "seconds of audio", unit="s", scale=1 / frame_rate)
        quiet = (gr.skip(),) * (len(players) + 1)
        seed_shown = False  # the seed box changes once; every update the page gets costs it CPU
        for item in wrapper.generate(prompt, on_step=on_step, interrupt=interrupt, seed=seed, **settings):
            if not item.done:
                if interrupt is not None and interrupt.is_set():
                    continue  # stopped: the clip so far comes next, sooner without this chunk's encoding
                # Without FFmpeg the live player is left alone: an empty stream sets the page polling it.
                chunk = wav_bytes(item.chunk[0], item.sampling_rate) if CAN_STREAM else gr.skip()
                yield (chunk, status_line(item, wrapper.entry.name), gr.skip() if seed_shown else item.seed, *quiet)
                seed_shown = True
                continue
            paths = [str(path) for path in item.paths]
            shown = [gr.Audio(value=paths[i] if i < len(paths) else None, visible=i < max(1, len(paths))) for i in range(len(players))]
            yield (gr.skip(), status_line(item, wrapper.entry.name), item.seed, *shown, paths)

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
        settings = {"duration": duration, "top_k": top_k, "top_p": top_p, "temperature": temperature, "guidance": guidance}
        yield from music_run(prompt, model, seed, settings, progress)

    stop_flags = StopFlags()

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
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[Any]:
        """The page's run: its outputs, then the run button's label. The first chunk clears the previous
        run's players; Stop (the session's flag) ends it with the audio made so far as its result."""
        flag = stop_flags.start(request)
        try:
            if flag.is_set():  # Stop came while the run waited in the queue
                yield (gr.skip(), "Stopped before it started", *[gr.skip()] * (len(outputs) - 1))
                return
            settings = {"duration": duration, "top_k": top_k, "top_p": top_p, "temperature": temperature, "guidance": guidance}
            run = music_run(prompt, model, request_seed(seed, randomise), settings, progress, flag)
            cleared = False
            for live, line, used, *shown, files in errors_in_place(run, outputs=len(outputs), status=1):
                label: Any = gr.skip()
                if isinstance(files, list):  # the result: the download panel appears only now
                    files = gr.File(value=files, visible=bool(files))
                elif isinstance(line, str) and line.startswith(GENERATING):
                    label = running_label(line.removeprefix(GENERATING).split(" · ")[0])
                    if not cleared:  # the previous run's clips must not pass for this one's
                        shown = [gr.Audio(value=None, visible=i == 0) for i in range(len(players))]
                        files, cleared = gr.File(value=None, visible=False), True
                yield (live, line, used, *shown, files, label)
        finally:
            stop_flags.end(request, flag)

    outputs = [live, status, seed, *players, files]
    show_running([run.click], run, stop)
    bring_into_view([run.click], "music-output")
    event = run.click(
        on_device(
            serving, generate_from_page, "music", status_update(len(outputs) + 1, 1), work=work, default=default,
            batch=BATCH_BY, stopped=stop_flags.stopped,
        ),
        [model, prompt, duration, seed, randomize, top_k, top_p, temperature, guidance],
        [*outputs, run],
        api_visibility="private",
        **DEVICE_EVENT,
        show_progress_on=live,
    )
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
        batch=BATCH_BY,
        status=1,  # the status line; the last output is the WAV files
    )
    show_idle([event], run, stop)
    # Stop sets this browser's own flag: the run ends at the next frame and shows the audio made so far.
    stop.click(stop_flags.stop, None, None, queue=False, api_visibility="private")
    settings = {
        "prompt": prompt, "model": model, "duration": duration, "seed": seed, "randomise": randomize, "top_k": top_k,
        "top_p": top_p, "temperature": temperature, "guidance": guidance,
    }  # fmt: skip
    return Made(runs=[event], settings=settings, files=files, stats=status, seed_used=seed)

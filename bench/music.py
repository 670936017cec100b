"""Real-time factor of the Music tab through the app, as a ratio to raw `generate` on the same tiny model.

    python bench/music.py [--duration 5] [--runs 5]

The app side is the whole request over gradio_client on loopback: queue, streaming (chunk decodes and
the live player's encoding) and the WAV files, timed from submit to the final result (the files stay on
the server, as for a browser, which plays them from there). The raw side is
`MusicgenForConditionalGeneration.generate` with the same prompt, settings and seed, run in a worker
thread as the app runs it (on a loaded 2-core machine torch in the main thread can be many times slower).
Runs alternate between the two; medians are compared. Target: ratio >= 0.9.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.tiny import build_tiny_catalog  # noqa: E402
from gradio_client import Client  # noqa: E402

from tests.conftest import AppServer  # noqa: E402

PROMPT = "lofi piano beat"


def raw_seconds(model, processor, duration: float, seed: int) -> float:
    import torch

    frame_rate = model.config.audio_encoder.frame_rate
    inputs = processor(text=[PROMPT], padding=True, return_tensors="pt")
    timing: dict[str, float] = {}

    def run() -> None:
        torch.manual_seed(seed)
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                **inputs,
                max_new_tokens=round(frame_rate * duration) + model.decoder.num_codebooks - 1,
                do_sample=True,
                top_k=250,
                guidance_scale=3.0,
            )
        timing["seconds"] = time.perf_counter() - started

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return timing["seconds"]


def app_request(client, duration: float, seed: int) -> tuple[float, tuple]:
    """Seconds from submit to the final result, and the result (its status line is output 1)."""
    started = time.perf_counter()
    result = client.submit(
        PROMPT, model="tiny-musicgen", seed=seed, duration=duration, top_k=250, top_p=0.0, temperature=1.0, guidance=3.0,
        api_name="/generate_music",
    ).result(timeout=600)
    return time.perf_counter() - started, result


def app_seconds(client, duration: float, seed: int) -> float:
    return app_request(client, duration, seed)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from transformers import AutoProcessor, MusicgenForConditionalGeneration

    folder = build_tiny_catalog().tasks["music"].get("tiny-musicgen").source.path
    model = MusicgenForConditionalGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    server = AppServer(["--tiny"], Path(tempfile.mkdtemp(prefix="atelier-bench-")))
    try:
        server.wait_until_serving()
        # A browser plays the results from the server; the client need not download them to time the run.
        client = Client(server.url, verbose=False, download_files=False)
        app_seconds(client, 1.0, 0)  # load the model into the app before timing
        raw_seconds(model, processor, 1.0, 0)
        raw, app = [], []
        for run in range(args.runs):
            raw.append(raw_seconds(model, processor, args.duration, run))
            app.append(app_seconds(client, args.duration, run))
            print(f"run {run + 1}: raw {raw[-1]:.2f} s, app {app[-1]:.2f} s", flush=True)
    finally:
        server.stop()
    raw_rtf = args.duration / statistics.median(raw)
    app_rtf = args.duration / statistics.median(app)
    print(f"{args.duration:g} s of audio, tiny MusicGen, median of {args.runs}")
    print(f"raw generate: real-time factor {raw_rtf:.2f}")
    print(f"through the app (gradio_client, streaming): real-time factor {app_rtf:.2f}")
    print(f"ratio app / raw: {app_rtf / raw_rtf:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()

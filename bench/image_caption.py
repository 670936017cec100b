"""Through the app vs direct: a 4-step tiny image and a tiny caption, as a ratio (target >= 0.9).

The app runs `--tiny` on loopback and is driven by gradio_client; "direct" loads the same saved folders
with the same diffusers/transformers calls in this process. Runs are interleaved (direct, app, direct,
app, ...) so a busy machine slows both alike, and medians are compared. Ratio = direct / app: 1.0 means
the app adds nothing, 0.9 means it costs 10 % more.

    python bench/image_caption.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradio_client import handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from modules.tiny import build_tiny_catalog  # noqa: E402
from tests.conftest import AppServer  # noqa: E402

STEPS, SIDE, GUIDANCE, SEED = 4, 64, 5.0, 7
BEAMS, MAX_TOKENS = 3, 12


def direct_image(folder: Path) -> Callable[[], None]:
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def run() -> None:
        with torch.inference_mode():
            image = pipe(
                "a red cat",
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                width=SIDE,
                height=SIDE,
                generator=torch.Generator("cpu").manual_seed(SEED),
            ).images[0]
        image.save(tempfile.mktemp(suffix=".png"))  # the app saves a PNG too

    return run


def direct_caption(folder: Path, picture: Path) -> Callable[[], None]:
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(folder)
    model = BlipForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()

    def run() -> None:
        inputs = processor(images=Image.open(picture).convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, num_beams=BEAMS, do_sample=False, max_new_tokens=MAX_TOKENS)
        processor.decode(ids[0], skip_special_tokens=True)

    return run


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def compare(name: str, direct: Callable[[], None], app: Callable[[], object], runs: int) -> float:
    direct(), app()  # warm both: first calls pay for lazy imports and loads
    times: dict[str, list[float]] = {"direct": [], "app": []}
    for _ in range(runs):
        times["direct"].append(timed(direct))
        times["app"].append(timed(app))
    d, a = statistics.median(times["direct"]), statistics.median(times["app"])
    print(f"{name:<34} direct {d * 1000:8.1f} ms   app {a * 1000:8.1f} ms   ratio {d / a:.2f}")
    return d / a


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    catalog = build_tiny_catalog()
    image_folder = Path(catalog.tasks["image"].models[0].source.path)
    caption_folder = Path(catalog.tasks["caption"].models[0].source.path)
    work = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    picture = work / "picture.png"
    Image.new("RGB", (96, 64), (180, 40, 40)).save(picture)

    import torch

    # The same torch thread count on both sides (on a busy machine, 2 threads can be far slower than 1).
    server = AppServer(["--tiny"], work, env={"OMP_NUM_THREADS": str(torch.get_num_threads())})
    try:
        server.wait_until_serving()
        client = server.client()
        image_model = catalog.tasks["image"].models[0].id
        caption_model = catalog.tasks["caption"].models[0].id
        round_trip = statistics.median(timed(lambda: client.predict("x", api_name="/use_as_prompt")) for _ in range(10))
        print(f"torch threads {torch.get_num_threads()}; an app round trip that computes nothing: {round_trip * 1000:.1f} ms")
        ratios = [
            compare(
                f"image: {STEPS} steps, {SIDE}x{SIDE}, CFG",
                direct_image(image_folder),
                lambda: client.predict(
                    "a red cat", model=image_model, seed=SEED, steps=STEPS, guidance=GUIDANCE, width=SIDE, height=SIDE,
                    api_name="/generate_image",
                ),
                args.runs,
            ),
            compare(
                f"caption: {BEAMS} beams, {MAX_TOKENS} tokens",
                direct_caption(caption_folder, picture),
                lambda: client.predict(
                    handle_file(str(picture)), model=caption_model, decoding="beam", num_beams=BEAMS, max_new_tokens=MAX_TOKENS,
                    api_name="/caption",
                ),
                args.runs,
            ),
        ]
    finally:
        server.stop()
    print(f"worst ratio {min(ratios):.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()

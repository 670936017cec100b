"""Text -> image -> 3D through the app, as a ratio to calling the same two pipelines directly.

    python bench/text_image_3d.py [--image-steps 8] [--steps 64] [--runs 5]

The app side is what a script does over gradio_client on loopback: /generate_image, then the PNG it got
back sent to /generate_3d_from_image (uploaded again, as a client on another machine must), timed from
the first submit to the second result. The direct side is the tiny diffusers pipeline, its image saved as
a PNG, then `PointEImagePipeline.__call__` on that picture, with the same settings and seeds, in a worker
thread as the app runs them. Runs alternate between the two; medians are compared. Target: ratio >= 0.9.

The `--tiny` models make a run short, so the fixed cost of two HTTP round trips and an upload (about
0.15 s each on loopback here) weighs on it; more Point-E steps (`--steps`, at most 256) move the ratio
towards the per-step cost of the app. Both sides run torch on one thread (OMP_NUM_THREADS=1 unless set),
as bench/pointe_app.py explains.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, here and in the app it starts

from gradio_client import Client, handle_file  # noqa: E402

from modules.memory.threads import in_fresh_thread  # noqa: E402
from modules.tiny import build_tiny_catalog  # noqa: E402
from tests.conftest import AppServer  # noqa: E402

PROMPT = "a red chair"
IMAGE_MODEL, POINTS_MODEL = "tiny-sd", "tiny-point-e-image"
SIDE = 64


def direct_seconds(image_steps: int, steps: int, seed: int, pipelines: tuple, scratch: Path) -> float:
    import torch
    from PIL import Image

    text_to_image, image_to_points = pipelines

    def run() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            picture = text_to_image(
                PROMPT, num_inference_steps=image_steps, width=SIDE, height=SIDE,
                generator=torch.Generator("cpu").manual_seed(seed),
            ).images[0]  # fmt: skip
        path = scratch / f"{seed}.png"
        picture.save(path)  # the app writes a PNG, and the 3D request reads one
        image_to_points(Image.open(path).convert("RGB"), seed=seed, guidance_scale=3.0, num_steps=steps)
        return time.perf_counter() - started

    return in_fresh_thread(run, name="bench-direct")  # a worker thread, as the app runs a request


def app_seconds(client: Client, image_steps: int, steps: int, seed: int) -> float:
    started = time.perf_counter()
    _, pngs, _, _ = client.predict(
        PROMPT, model=IMAGE_MODEL, seed=seed, steps=image_steps, width=SIDE, height=SIDE, api_name="/generate_image"
    )
    client.predict(
        handle_file(pngs[0]), model=POINTS_MODEL, seed=seed, steps=steps, guidance=3.0, api_name="/generate_3d_from_image"
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-steps", type=int, default=8, help="denoising steps of the image")
    parser.add_argument("--steps", type=int, default=64, help="Heun steps per Point-E stage (at most 256)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import torch
    from diffusers import AutoPipelineForText2Image

    from modules.pointe.image_pipeline import PointEImagePipeline

    catalogue = build_tiny_catalog()
    text_to_image = AutoPipelineForText2Image.from_pretrained(catalogue.tasks["image"].get(IMAGE_MODEL).source.path, dtype=torch.float32)
    text_to_image.set_progress_bar_config(disable=True)
    image_to_points = PointEImagePipeline.from_pretrained(catalogue.tasks["pointcloud"].get(POINTS_MODEL).source.path)
    root = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    server = AppServer(["--tiny", "--no-mcp"], root)
    try:
        server.wait_until_serving()
        client = Client(server.url, verbose=False)  # downloads the PNG, as a remote script would
        app_seconds(client, 2, 2, 0)  # load both models into the app before timing
        direct_seconds(2, 2, 0, (text_to_image, image_to_points), root)
        direct, app = [], []
        for run in range(args.runs):
            direct.append(direct_seconds(args.image_steps, args.steps, run, (text_to_image, image_to_points), root))
            app.append(app_seconds(client, args.image_steps, args.steps, run))
            print(f"run {run + 1}: direct {direct[-1]:.2f} s, app {app[-1]:.2f} s", flush=True)
    finally:
        server.stop()
    direct_median, app_median = statistics.median(direct), statistics.median(app)
    print(f"tiny text -> image ({args.image_steps} steps) -> 3D ({args.steps} + {args.steps} Heun steps), median of {args.runs}")
    print(f"direct (diffusers, then PointEImagePipeline): {direct_median:.2f} s")
    print(f"through the app (/generate_image, then /generate_3d_from_image): {app_median:.2f} s")
    print(f"ratio app / direct speed: {direct_median / app_median:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()

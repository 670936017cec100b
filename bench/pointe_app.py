"""A full tiny Point-E sampling run through the 3D tab, as a ratio to calling the pipeline directly.

    python bench/pointe_app.py [--size small|tiny] [--steps N] [--runs 5]

The app side is the whole request over gradio_client on loopback, timed from submit to the final
result: queue, lease, per-step progress and status lines, and writing the PLY and GLB (which stay on
the server, as for a browser, which shows them from there). The direct side is
`PointEPipeline.__call__` on the same folder with the same prompt, settings and seed, run in a worker
thread as the app runs it. Runs alternate between the two; medians are compared. Target: ratio >= 0.9.

Sizes: `tiny` is the `--tiny` model (64 + 192 points, width 32): even 256 + 256 steps take only ~2.5 s,
so a fixed ~0.2-0.3 s of HTTP and queueing weighs on it. `small` (the default) is the same classes at
256 + 768 points, width 64, 4 layers, random weights, saved with `save_pretrained` and served through a
catalogue whose entry has `source: {path: FOLDER}` (the local-files route), so a run takes long enough
that the per-step cost of the app, not the fixed cost of one request, is what is measured.

Both sides run torch on one thread (OMP_NUM_THREADS=1 unless set): the tiny model's matrices are too
small to gain from more, and two processes each spinning two threads on a 2-core machine measure the
contention, not the app.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, here and in the app it starts

from gradio_client import Client  # noqa: E402

from modules.tiny import build_tiny_catalog  # noqa: E402
from tests.conftest import AppServer  # noqa: E402

PROMPT = "a red chair"


def build_small(root: Path) -> Path:
    """A random pipeline between the tiny one and the real one, saved as the app loads local folders."""
    import dataclasses

    import torch

    from modules.pointe.config import PointDiffusionConfig
    from modules.pointe.model import build_model
    from modules.pointe.pipeline import PointEPipeline
    from modules.pointe.tiny import tiny_clip_text_encoder, tiny_clip_tokenizer

    torch.manual_seed(0)
    base = dataclasses.replace(PointDiffusionConfig.tiny_text(), width=64, layers=4, heads=4, n_ctx=256)
    upsampler = dataclasses.replace(
        PointDiffusionConfig.tiny_upsample(), width=64, layers=4, heads=4, n_ctx=768, cond_ctx=256
    )
    pipeline = PointEPipeline(build_model(base), build_model(upsampler), tiny_clip_text_encoder(), tiny_clip_tokenizer())
    folder = root / "small-point-e"
    pipeline.save_pretrained(folder)
    catalogue = root / "models.yaml"
    catalogue.write_text(
        "tasks:\n  pointcloud:\n    default: small-point-e\n    models:\n"
        f"      - {{id: small-point-e, name: Small Point-E, wrapper: point-e, source: {{path: '{folder}'}}, "
        "license: random weights, random_weights: true}\n"
    )
    return folder


def direct_seconds(pipeline, steps: int, seed: int) -> float:
    timing: dict[str, float] = {}

    def run() -> None:
        started = time.perf_counter()
        pipeline(PROMPT, seed=seed, guidance_scale=3.0, num_steps=steps)
        timing["seconds"] = time.perf_counter() - started

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return timing["seconds"]


def app_seconds(client: Client, model: str, steps: int, seed: int) -> float:
    started = time.perf_counter()
    client.submit(PROMPT, model=model, seed=seed, steps=steps, guidance=3.0, api_name="/generate_3d").result(timeout=600)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "tiny"], default="small")
    parser.add_argument("--steps", type=int, help="Heun steps per stage, at most 256 (default: small 64, tiny 256)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    steps_per_stage = args.steps or (64 if args.size == "small" else 256)

    from modules.pointe.pipeline import PointEPipeline

    root = Path(tempfile.mkdtemp(prefix="atelier-bench-"))
    if args.size == "tiny":
        model, folder, app_args = "tiny-point-e", build_tiny_catalog().tasks["pointcloud"].get("tiny-point-e").source.path, ["--tiny"]
    else:
        model, folder, app_args = "small-point-e", build_small(root), ["--models", str(root / "models.yaml")]
    pipeline = PointEPipeline.from_pretrained(folder)
    server = AppServer(app_args, root)
    try:
        server.wait_until_serving()
        client = Client(server.url, verbose=False, download_files=False)
        app_seconds(client, model, 2, 0)  # load the model into the app before timing
        direct_seconds(pipeline, 2, 0)
        direct, app = [], []
        for run in range(args.runs):
            direct.append(direct_seconds(pipeline, steps_per_stage, run))
            app.append(app_seconds(client, model, steps_per_stage, run))
            print(f"run {run + 1}: direct {direct[-1]:.2f} s, app {app[-1]:.2f} s", flush=True)
    finally:
        server.stop()
    direct_median, app_median = statistics.median(direct), statistics.median(app)
    steps = 2 * steps_per_stage
    print(f"{args.size} Point-E, {steps_per_stage} + {steps_per_stage} Heun steps, median of {args.runs}")
    print(f"direct PointEPipeline: {direct_median:.2f} s ({steps / direct_median:.1f} steps/s)")
    print(f"through the app (gradio_client, progress, PLY + GLB): {app_median:.2f} s ({steps / app_median:.1f} steps/s)")
    print(f"ratio app / direct speed: {direct_median / app_median:.2f} (target >= 0.9)")


if __name__ == "__main__":
    main()

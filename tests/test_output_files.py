"""Output files read back by readers other than the libraries that wrote them.

PNG with sd-parsers (an AUTOMATIC1111-format reader), WAV with ffprobe (FFmpeg), PLY with plyfile, GLB
with pygltflib and the Khronos glTF validator. Files come from the real app on loopback (`tiny_client`),
through the same request helpers as each tab's own tests; the schedule and orientation checks use the
same code paths in-process where a known input is needed.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gradio_client import Client
from plyfile import PlyData
from pygltflib import GLTF2
from sd_parsers import ParserManager

from modules.tiny import build_tiny_catalog
from modules.wrappers.text_to_3d import write_point_cloud
from modules.wrappers.text_to_image import SCHEDULERS, a1111_sampler, scheduler_for
from tests.conftest import ROOT
from tests.test_image_caption import generate as generate_image
from tests.test_music import music
from tests.test_points3d import generate as generate_3d

VALIDATOR = ROOT / ".cache" / "node" / "node_modules" / "gltf-validator"


def tiny_folder(task: str) -> Path:
    (entry,) = build_tiny_catalog().tasks[task].models
    return Path(entry.source.path)


def srgb_to_linear(byte: np.ndarray) -> np.ndarray:
    """The sRGB transfer curve undone (IEC 61966-2-1), written out here rather than taken from the app."""
    c = byte / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# -- PNG ----------------------------------------------------------------------------------------------


def test_png_parameters_read_back_by_an_a1111_reader(tiny_client: Client) -> None:
    (path,), seed, _, _ = generate_image(
        tiny_client, "a lighthouse, at dusk", seed=4321, negative_prompt="blurry", scheduler="dpm++-2m", guidance=6.5
    )
    weights = tiny_folder("image") / "unet" / "diffusion_pytorch_model.safetensors"
    info = ParserManager().parse(path)
    assert info is not None and info.generator.name == "AUTOMATIC1111"
    (sampler,) = info.samplers
    assert [p.value for p in sampler.prompts] == ["a lighthouse, at dusk"]
    assert [p.value for p in sampler.negative_prompts] == ["blurry"]
    assert sampler.name == "DPM++ 2M"
    assert sampler.parameters == {"steps": "4", "scheduler": "Karras", "cfg_scale": "6.5", "seed": str(seed)}
    assert seed == 4321
    assert sampler.model.name == "tiny-sd"
    assert sampler.model.hash == hashlib.sha256(weights.read_bytes()).hexdigest()[:10]
    assert info.metadata == {"Size": "64x64", "RNG": "CPU"}


def test_png_without_negative_prompt_or_guidance_reads_as_a1111_writes_it(tiny_client: Client) -> None:
    (path,), seed, _, _ = generate_image(tiny_client, "a red cat", seed=5, guidance=0.0, scheduler="euler")
    from PIL import Image

    text = Image.open(path).info["parameters"]
    first, line = text.split("\n")
    assert first == "a red cat", "A1111 writes no `Negative prompt:` line when there is none"
    # diffusers runs no guidance at 0; A1111's equivalent is CFG scale 1 (its 0 means unconditional only)
    assert line.startswith("Steps: 4, Sampler: Euler, Schedule type: Uniform, CFG scale: 1, Seed: 5, Size: 64x64, Model hash: ")
    assert line.endswith(", Model: tiny-sd, RNG: CPU")


def test_model_hash_is_computed_once_per_version_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from modules.wrappers.metadata import file_sha256

    monkeypatch.setenv("ATELIER_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights v1")
    assert file_sha256(weights) == hashlib.sha256(b"weights v1").hexdigest()
    stamp = weights.stat()
    weights.write_bytes(b"weights v2")  # same size; put the old modification time back
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert file_sha256(weights) == hashlib.sha256(b"weights v1").hexdigest(), "hashed again, not read from the cache"
    os.utime(weights, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 1))
    assert file_sha256(weights) == hashlib.sha256(b"weights v2").hexdigest(), "a changed file kept its old hash"


SD15_SCHEDULER = {  # stable-diffusion-v1-5's scheduler/scheduler_config.json
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
TURBO_SCHEDULER = {  # sd-turbo's scheduler/scheduler_config.json (the fields that matter here)
    "_class_name": "EulerDiscreteScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}


def model_schedulers() -> dict[str, Any]:
    import diffusers

    tiny = json.loads((tiny_folder("image") / "scheduler" / "scheduler_config.json").read_text())
    return {
        name: getattr(diffusers, config["_class_name"]).from_config(config)
        for name, config in {"tiny-sd": tiny, "sd-1.5": SD15_SCHEDULER, "sd-turbo": TURBO_SCHEDULER}.items()
    }


def a1111_timesteps(schedule: str, steps: int) -> np.ndarray:
    """The timesteps A1111's schedule type picks (modules/sd_schedulers.py), for a 1000-step model."""
    if schedule == "Uniform":  # k-diffusion's get_sigmas
        return np.linspace(999, 0, steps)
    if schedule == "SGM Uniform":
        return np.linspace(999, 0, steps + 1)[:-1]
    if schedule == "DDIM":
        return np.arange(1, 1000, 1000 // steps)[::-1]
    raise AssertionError(f"no timesteps for {schedule}")


@pytest.mark.parametrize("model", ["tiny-sd", "sd-1.5", "sd-turbo"])
@pytest.mark.parametrize("choice", list(SCHEDULERS))
def test_every_scheduler_choice_runs_the_schedule_its_png_names(model: str, choice: str) -> None:
    steps = 25
    scheduler = scheduler_for(choice, model_schedulers()[model])
    sampler, schedule = a1111_sampler(scheduler)
    scheduler.set_timesteps(steps)
    if choice == "dpm++-2m":
        assert (sampler, schedule) == ("DPM++ 2M", "Karras"), "A1111 reads a bare DPM++ 2M as Karras"
    if schedule == "Karras":  # k-diffusion's get_sigmas_karras over the model's own sigma range
        alphas = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)
        trained = ((1 - alphas) / alphas) ** 0.5
        ramp = np.linspace(0, 1, steps)
        low, high = trained[0] ** (1 / 7), trained[-1] ** (1 / 7)
        expected = (high + ramp * (low - high)) ** 7
        assert np.allclose(scheduler.sigmas[:steps].numpy(), expected, rtol=1e-4)
    else:
        ran = np.unique(scheduler.timesteps.numpy())[::-1]  # PLMS repeats one timestep while warming up
        assert np.allclose(ran, a1111_timesteps(schedule, steps), atol=1.0), (sampler, schedule, ran[:4])


# -- WAV ----------------------------------------------------------------------------------------------


def ffprobe_tags(path: Path) -> dict[str, str]:
    shown = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-of", "json", str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(shown.stdout)["format"]["tags"]


def test_wav_carries_prompt_model_seed_and_settings_in_riff_info(tiny_client: Client) -> None:
    if shutil.which("ffprobe") is None:
        pytest.fail("ffprobe is not installed: `make test` installs FFmpeg (apt-get install ffmpeg)")
    prompts = ["calm piano, late at night", "fast drums: café ♪"]
    result = music(tiny_client, "\n".join(prompts), duration=1, seed=77, top_k=50, top_p=0.5, temperature=0.9, guidance=2.5).result(timeout=120)
    paths = [Path(p) for p in result[-1]]
    assert len(paths) == 2
    for path, prompt in zip(paths, prompts):
        tags = ffprobe_tags(path)
        assert tags["title"] == prompt
        assert tags["artist"] == "Tiny MusicGen"
        assert tags["encoder"].startswith("Atelier")  # libsndfile appends its own name to ISFT
        assert len(tags["date"]) == 10
        assert json.loads(tags["comment"]) == {
            "prompt": prompt,
            "model": "Tiny MusicGen",
            "model_id": "tiny-musicgen",
            "duration": 1.0,
            "top_k": 50,
            "top_p": 0.5,
            "temperature": 0.9,
            "guidance": 2.5,
            "seed": 77,
            "software": "Atelier",
        }


# -- PLY and GLB --------------------------------------------------------------------------------------


def ply_parameters(ply: PlyData) -> dict[str, Any]:
    """Our `comment key: json` lines (trimesh adds one of its own, a bare URL)."""
    pairs = [comment.split(": ", 1) for comment in ply.comments if ": " in comment]
    return {key: json.loads(value) for key, value in pairs}


def glb_accessor(gltf: GLTF2, index: int) -> np.ndarray:
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = {5126: "<f4", 5121: "u1"}[accessor.componentType]
    width = {"VEC3": 3, "VEC4": 4}[accessor.type]
    start = view.byteOffset + (accessor.byteOffset or 0)
    return np.frombuffer(gltf.binary_blob(), dtype=dtype, count=accessor.count * width, offset=start).reshape(-1, width)


def glb_cloud(path: Path) -> tuple[GLTF2, np.ndarray, np.ndarray]:
    gltf = GLTF2().load(str(path))
    (mesh,) = gltf.meshes
    (primitive,) = mesh.primitives
    return gltf, glb_accessor(gltf, primitive.attributes.POSITION), glb_accessor(gltf, primitive.attributes.COLOR_0)


def test_ply_and_glb_carry_parameters_linear_colours_and_the_same_points(tiny_client: Client) -> None:
    viewer, files, seed, _ = generate_3d(tiny_client, prompt="a tall vase, blue", seed=99, guidance=2.5, num_steps=3)
    ply_path, glb_path = sorted(files, key=lambda f: f.suffix != ".ply")
    expected = {
        "prompt": "a tall vase, blue",
        "model": "Tiny Point-E",
        "model_id": "tiny-point-e",
        "guidance": 2.5,
        "num_steps": 3,
        "seed": 99,
        "software": "Atelier",
    }
    ply = PlyData.read(str(ply_path))
    assert seed == 99 and ply_parameters(ply) == expected
    gltf, positions, colours = glb_cloud(glb_path)
    assert gltf.asset.extras == expected
    vertices = ply["vertex"]
    ply_points = np.column_stack([vertices["x"], vertices["y"], vertices["z"]])
    ply_colours = np.column_stack([vertices["red"], vertices["green"], vertices["blue"]])
    assert np.allclose(positions, ply_points, atol=1e-6), "the GLB and the PLY hold different points"
    assert gltf.accessors[gltf.meshes[0].primitives[0].attributes.COLOR_0].componentType == 5126
    assert np.allclose(colours[:, :3], srgb_to_linear(ply_colours), atol=1e-6), "COLOR_0 is not the linear sRGB"
    assert np.all(colours[:, 3] == 1.0)
    assert len(np.unique(ply_colours, axis=0)) > 1
    assert np.array_equal(PlyData.read(str(viewer))["vertex"].data, vertices.data), "the viewer shows another file"


def test_glb_passes_the_khronos_validator(tiny_client: Client) -> None:
    if not VALIDATOR.is_dir() or shutil.which("node") is None:
        pytest.fail("the Khronos glTF validator is not installed: `make test` installs it with npm into .cache/node")
    _, files, _, _ = generate_3d(tiny_client, seed=3)
    (glb,) = [f for f in files if f.suffix == ".glb"]
    script = (
        "require(process.argv[1]).validateBytes(new Uint8Array(require('fs').readFileSync(process.argv[2])))"
        ".then(r => console.log(JSON.stringify(r.issues)))"
    )
    shown = subprocess.run(["node", "-e", script, str(VALIDATOR), str(glb)], capture_output=True, text=True, check=True)
    issues = json.loads(shown.stdout)
    assert (issues["numErrors"], issues["numWarnings"]) == (0, 0), issues["messages"]


def chiral_cloud() -> tuple[np.ndarray, np.ndarray]:
    """A tall column along Point-E's up (+Z) with a short arm along +X and one along +Y, each its own colour."""
    rng = np.random.default_rng(0)
    column = np.column_stack([rng.uniform(-0.05, 0.05, (400, 2)), rng.uniform(-0.5, 0.5, 400)])
    arm_x = np.column_stack([rng.uniform(0.1, 0.3, 100), np.zeros(100), np.zeros(100)])
    arm_y = np.column_stack([np.zeros(100), rng.uniform(0.1, 0.3, 100), np.zeros(100)])
    colours = np.repeat(np.array([[0, 0, 255], [255, 0, 0], [0, 255, 0]], np.uint8), [400, 100, 100], axis=0)
    return np.vstack([column, arm_x, arm_y]).astype(np.float32), colours


def test_glb_is_y_up_by_a_rotation_not_a_mirror(tmp_path: Path) -> None:
    points, colours = chiral_cloud()
    _, glb = write_point_cloud(points, colours, tmp_path / "chiral", {"prompt": "chiral"})
    _, positions, linear = glb_cloud(glb)
    column, arm_x, arm_y = positions[:400], positions[400:500], positions[500:]
    extent = column.max(axis=0) - column.min(axis=0)
    assert extent.argmax() == 1 and extent[1] > 0.9, f"the tall axis is not +Y: extent {extent}"
    up = column[np.argmax(points[:400, 2])]
    assert up[1] > 0.4, "Point-E's top is not at +Y"
    x_dir, y_dir = arm_x.mean(axis=0), arm_y.mean(axis=0)
    up_dir = np.array([0.0, 1.0, 0.0])
    # Point-E's (+X, +Y, +Z) was right-handed, X x Y = Z; a rotation keeps that, a mirror flips the sign.
    cross = np.cross(x_dir / np.linalg.norm(x_dir), y_dir / np.linalg.norm(y_dir))
    assert np.allclose(cross, up_dir, atol=1e-6), f"handedness flipped: X x Y = {cross}"
    assert np.allclose(linear[:, :3], srgb_to_linear(colours), atol=1e-6)


def test_the_viewer_shows_the_written_cloud_upright(tmp_path: Path) -> None:
    """Headless Chromium: the PLY the 3D tab shows stands upright in Gradio's Model3D viewer (Y-up)."""
    import gradio as gr
    from PIL import Image

    from tests.test_ui import CHROMIUM_FLAGS, playwright_api  # skips where Playwright is not installed

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium)")
    points, _ = chiral_cloud()
    column = points[:400]
    colours = np.where(column[:, 2:] > 0, [255, 0, 0], [0, 0, 255]).astype(np.uint8)  # red top, blue bottom
    ply, _ = write_point_cloud(column, colours, tmp_path / "column", {"prompt": "column"})
    with gr.Blocks() as demo:  # the viewer as the 3D tab configures it
        gr.Model3D(value=str(ply), display_mode="point_cloud", clear_color=(0.1, 0.1, 0.12, 1.0))
    _, url, _ = demo.launch(prevent_thread_lock=True, allowed_paths=[str(tmp_path)], quiet=True)
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 900, "height": 900})
                page.goto(url)
                canvas = page.locator("canvas").first
                canvas.wait_for(timeout=30_000)
                deadline = time.monotonic() + 30
                while True:  # until the viewer has drawn the points
                    shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
                    red = (shot[..., 0] > 120) & (shot[..., 1] < 80) & (shot[..., 2] < 80)
                    blue = (shot[..., 2] > 120) & (shot[..., 0] < 80) & (shot[..., 1] < 80)
                    if (red.sum() > 50 and blue.sum() > 50) or time.monotonic() > deadline:
                        break
            finally:
                browser.close()
    finally:
        demo.close()
    assert red.sum() > 50 and blue.sum() > 50, "the viewer shows no points"
    rows, cols = np.nonzero(red | blue)
    assert np.ptp(rows) > 2 * np.ptp(cols), "the column does not stand upright"
    assert np.nonzero(red)[0].mean() < np.nonzero(blue)[0].mean(), "the column stands upside down"

"""3D tab end to end: the tiny Point-E on a real server on loopback, driven by gradio_client.

Covers the Model3D file, the exported PLY and GLB read back with trimesh, seeds that reproduce the
points, bad input, and Stop releasing the lease. tests/test_output_files.py reads the files' parameters,
orientation and colours back with other readers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
from gradio_client import Client

from tests.conftest import AppServer, model_row, stop_when

MODEL = "tiny-point-e"
KEY = f"pointcloud/{MODEL}"
TINY_POINTS = 64 + 192  # base + upsampler of the tiny configuration


def submit(client: Client, prompt: str = "a red chair", seed: object = 7, **settings: object):
    """One /generate_3d request (fixed seed unless `seed` is None); returns the job."""
    return client.submit(
        prompt,
        model=MODEL,
        seed=-1 if seed is None else seed,
        steps=settings.get("num_steps", 4),
        guidance=settings.get("guidance", 3.0),
        make_mesh=settings.get("make_mesh", False),
        mesh_grid=settings.get("mesh_grid", 24),
        api_name="/generate_3d",
    )


def generate(client: Client, **kwargs: object) -> tuple[Path, Path | None, list[Path], int, str]:
    """The cloud shown, the mesh shown (None without make_mesh), the downloads, the seed used, the stats."""
    viewer, mesh, files, seed_used, stats = submit(client, **kwargs).result(timeout=120)
    return Path(viewer), Path(mesh) if mesh else None, [Path(f) for f in files], int(seed_used), stats


def cloud_of(path: Path) -> trimesh.PointCloud:
    loaded = trimesh.load(path)
    if isinstance(loaded, trimesh.Scene):  # GLB holds a scene of one point cloud
        (loaded,) = loaded.geometry.values()
    return loaded


def test_generation_returns_a_model3d_file_and_ply_glb_downloads(tiny_client: Client) -> None:
    viewer, mesh, files, seed_used, stats = generate(tiny_client, seed=11)
    assert viewer.suffix == ".ply" and viewer.stat().st_size > 0 and mesh is None
    assert sorted(f.suffix for f in files) == [".glb", ".ply"]
    assert seed_used == 11
    assert "8 steps (both stages)" in stats and "steps/s" in stats and f"{TINY_POINTS} points" in stats
    ply, glb = sorted(files, key=lambda f: f.suffix != ".ply")
    from_ply, from_glb = cloud_of(ply), cloud_of(glb)
    assert isinstance(from_ply, trimesh.PointCloud) and isinstance(from_glb, trimesh.PointCloud)
    assert from_ply.vertices.shape == from_glb.vertices.shape == (TINY_POINTS, 3)
    assert np.allclose(from_ply.vertices, from_glb.vertices, atol=1e-6)
    assert from_ply.colors.shape == (TINY_POINTS, 4)  # the GLB's are linear: see tests/test_output_files.py
    assert len(np.unique(from_ply.colors[:, :3], axis=0)) > 1, "every point has the same colour"
    assert np.array_equal(cloud_of(viewer).vertices, from_ply.vertices)


def test_same_seed_gives_the_same_points(tiny_client: Client) -> None:
    first, _, _, used, _ = generate(tiny_client, seed=None)
    again, _, _, _, _ = generate(tiny_client, seed=used)
    other, _, _, _, _ = generate(tiny_client, seed=(used + 1) % 2**32)
    a, b, c = (cloud_of(p) for p in (first, again, other))
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.colors, b.colors)
    assert not np.array_equal(a.vertices, c.vertices)


@pytest.mark.parametrize(
    ("prompt", "settings", "expected"),
    [
        ("", {}, "prompt is empty"),
        ("   ", {}, "prompt is empty"),
        ("x" * 100_000, {}, "prompt is 100,000 characters; the limit on this server is 10,000"),
        ("a chair", {"num_steps": 0}, "steps: Value 0 is less than minimum value 1"),
        ("a chair", {"num_steps": 10_000}, "steps: Value 10000 is greater than maximum value 256"),
        ("a chair", {"guidance": "strong"}, "guidance='strong' is not a number"),
        ("a chair", {"guidance": -1}, "guidance: Value -1 is less than minimum value 0"),
        ("a chair", {"seed": "lucky"}, "seed='lucky' is not a number"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(
    tiny_client: Client, prompt: str, settings: dict, expected: str
) -> None:
    with pytest.raises(Exception) as caught:
        submit(tiny_client, prompt, **settings).result(timeout=60)
    assert expected in str(caught.value)
    assert model_row(tiny_client, KEY)["in use"] == 0


def test_stop_ends_generation_and_releases_the_lease(tiny_client: Client) -> None:
    job = submit(tiny_client, "a long chair", num_steps=256)
    stop_when(tiny_client, job, KEY, lambda outputs: any(str(o[-1]).startswith("Stage") for o in outputs))
    assert not any(isinstance(o[-1], str) and o[-1].startswith("Done in") for o in job.outputs()), "ran to the end despite Stop"
    viewer, _, _, _, _ = generate(tiny_client)  # still serving
    assert cloud_of(viewer).vertices.shape == (TINY_POINTS, 3)


def test_the_point_cloud_renders_in_the_browser(tiny_app: AppServer) -> None:
    """Headless Chromium: generate on the 3D tab and see coloured points drawn on the Model3D canvas."""
    import io

    from PIL import Image

    from tests.test_ui import browser  # skips where Playwright is not installed

    with browser() as open_page:
        page = open_page(tiny_app.url)
        page.get_by_role("tab", name="3D").click()
        page.get_by_placeholder("a red motorcycle").fill("a blue chair")
        page.get_by_role("button", name="Generate", exact=True).last.click()
        page.get_by_text("steps/s").first.wait_for(timeout=60_000)
        canvas = page.locator("canvas").last
        canvas.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # let the viewer draw a few frames
        png = canvas.screenshot()
        shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    background = np.median(shot, axis=0)
    drawn = np.abs(shot.astype(int) - background).sum(axis=1) > 60
    assert drawn.mean() > 0.001, "the Model3D canvas shows no points"

"""3D from an image and meshes, end to end: the tiny Point-E image pipeline and SDF model on a real server
on loopback, driven by gradio_client, and the Image tab's "Make 3D" in the browser.

Covers an uploaded picture -> a coloured cloud, meshes read back as GLB / OBJ / STL by trimesh, an
Image-tab PNG whose parameters become the result's lineage, and bad input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
from gradio_client import Client, handle_file
from PIL import Image

from modules.wrappers.text_to_3d import srgb_to_linear
from tests.conftest import AppServer, model_row
from tests.test_image_caption import generate as generate_image
from tests.test_points3d import TINY_POINTS, cloud_of
from tests.test_points3d import generate as generate_from_text

MODEL = "tiny-point-e-image"
KEY = f"pointcloud/{MODEL}"


def from_image(client: Client, image: Path | str, seed: int = 5, **settings: object) -> tuple[Path, Path | None, list[Path], int, str]:
    """The cloud shown, the mesh shown (None without make_mesh), the downloads, the seed used, the stats."""
    viewer, mesh, files, seed_used, stats = client.predict(
        handle_file(str(image)),
        model=MODEL,
        seed=seed,
        steps=settings.get("steps", 3),
        guidance=settings.get("guidance", 3.0),
        make_mesh=settings.get("make_mesh", False),
        mesh_grid=settings.get("mesh_grid", 24),
        api_name="/generate_3d_from_image",
    )
    return Path(viewer), Path(mesh) if mesh else None, [Path(f) for f in files], int(seed_used), stats


def picture(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def mesh_of(path: Path) -> trimesh.Trimesh:
    loaded = trimesh.load(path, process=False)
    if isinstance(loaded, trimesh.Scene):
        (loaded,) = loaded.geometry.values()
    return loaded


def test_an_uploaded_picture_makes_a_cloud_that_depends_on_it(tiny_client: Client, tmp_path: Path) -> None:
    viewer, mesh, files, seed, stats = from_image(tiny_client, picture(tmp_path / "a.png", 0))
    assert sorted(f.suffix for f in files) == [".glb", ".ply"] and seed == 5 and mesh is None
    cloud = cloud_of(viewer)
    assert cloud.vertices.shape == (TINY_POINTS, 3)
    assert "from a.png" in stats and "6 steps (both stages)" in stats
    again, _, _, _, _ = from_image(tiny_client, picture(tmp_path / "b.png", 0))
    other, _, _, _, _ = from_image(tiny_client, picture(tmp_path / "c.png", 1))
    assert np.array_equal(cloud.vertices, cloud_of(again).vertices)
    assert not np.array_equal(cloud.vertices, cloud_of(other).vertices)


def test_make_a_mesh_downloads_coloured_glb_obj_and_stl(tiny_client: Client, tmp_path: Path) -> None:
    viewer, mesh, files, _, stats = from_image(tiny_client, picture(tmp_path / "m.png", 2), make_mesh=True, mesh_grid=24)
    by_suffix = {f.suffix: f for f in files if "-mesh" in f.name}
    assert sorted(by_suffix) == [".glb", ".obj", ".stl"]
    assert viewer.suffix == ".ply" and mesh is not None and mesh.suffix == ".glb"  # the mesh viewer shows it
    glb, obj, stl = (mesh_of(by_suffix[s]) for s in (".glb", ".obj", ".stl"))
    assert len(glb.faces) > 0 and f"{len(glb.faces):,} faces" in stats
    assert len(glb.faces) == len(obj.faces) == len(stl.faces)
    np.testing.assert_allclose(np.sort(glb.vertices, axis=0), np.sort(obj.vertices, axis=0), atol=1e-5)
    colours = glb.visual.vertex_colors[:, :3]
    assert colours.shape == (len(glb.vertices), 3) and len(np.unique(colours, axis=0)) > 1
    # The OBJ keeps sRGB bytes; the GLB stores linear floats, as glTF defines COLOR_0 (trimesh reads them
    # back as linear bytes), so compare through the sRGB curve.
    linear_obj = np.round(srgb_to_linear(np.sort(obj.visual.vertex_colors[:, :3], axis=0)) * 255)
    np.testing.assert_allclose(np.sort(colours, axis=0), linear_obj, atol=1)


def test_a_text_cloud_becomes_a_mesh_too(tiny_client: Client) -> None:
    _, mesh, files, _, _ = generate_from_text(tiny_client, seed=3, make_mesh=True)
    assert mesh is not None and sorted(f.suffix for f in files) == [".glb", ".glb", ".obj", ".ply", ".stl"]
    assert len(mesh_of(mesh).faces) > 0


def test_an_image_tab_png_carries_its_lineage_into_the_3d_result(tiny_client: Client) -> None:
    (png,), seed, _, _ = generate_image(tiny_client, prompt="a small red house", seed=42)
    _, _, _, _, stats = from_image(tiny_client, png)
    assert f"from {png.name}" in stats and "prompt “a small red house”" in stats
    assert "seed 42" in stats and "model tiny-sd" in stats


def not_a_picture(path: Path) -> Path:
    path.write_bytes(b"not a picture")
    return path


@pytest.mark.parametrize(("build", "expected"), [(not_a_picture, "is not an image"), (lambda p: None, "image is missing")])
def test_bad_images_get_a_clear_error_and_the_server_keeps_serving(
    tiny_client: Client, tmp_path: Path, build, expected: str
) -> None:
    target = build(tmp_path / "bad.png")
    with pytest.raises(Exception) as caught:
        tiny_client.predict(
            None if target is None else handle_file(str(target)), model=MODEL, seed=1, steps=3,
            api_name="/generate_3d_from_image",
        )
    assert expected in str(caught.value)
    assert model_row(tiny_client, KEY)["in use"] == 0


def test_mesh_grid_out_of_range_is_named(tiny_client: Client, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="mesh_grid: Value 2 is less than minimum value 16"):
        from_image(tiny_client, picture(tmp_path / "g.png", 3), make_mesh=True, mesh_grid=2)


def test_make_3d_in_the_browser_sends_the_image_and_shows_the_mesh(tiny_app: AppServer) -> None:
    """Headless Chromium: generate on the Image tab, press Make 3D, and see the 3D tab draw a result
    whose stats line names the source image."""
    import io

    from tests.test_ui import browser  # skips where Playwright is not installed

    with browser() as open_page:
        page = open_page(tiny_app.url, height=1000)
        page.get_by_role("tab", name="Image").first.click()
        page.get_by_label("Prompt").first.fill("a green teapot")
        page.get_by_role("button", name="Generate", exact=True).first.click()
        page.get_by_text("steps/s").first.wait_for(timeout=180_000)  # the Image tab's stats line
        page.get_by_role("button", name="Make 3D").click()
        made = page.get_by_text("points · seed")  # the 3D tab's stats line
        made.wait_for(timeout=180_000)
        stats = made.inner_text()
        canvas = page.locator("canvas").last
        canvas.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # let the viewer draw a few frames
        shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
    assert "from " in stats and ".png" in stats and "prompt “a green teapot”" in stats
    background = np.median(shot, axis=0)
    assert (np.abs(shot - background).sum(axis=1) > 60).mean() > 0.001, "the 3D viewer shows nothing"

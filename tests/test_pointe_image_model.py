"""Point-E's image path and SDF model against the official code: checkpoint keys, and golden outputs.

The golden numbers were computed by the official openai/point-e code on weights and inputs rebuilt here
from fixed seeds, the same way as tests/test_pointe_model.py (see tests/data/README.md).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modules.pointe.config import POINTE_CHANNEL_BIASES, POINTE_CHANNEL_SCALES, PointDiffusionConfig, SDFConfig
from modules.pointe.model import build_model
from modules.pointe.mesh import point_cloud_mesh, sdf_grid
from modules.pointe.sdf import PointCloudSDFModel
from tests.test_pointe_model import (
    ATOL,
    DATA,
    assert_chain_matches,
    assert_loads_strictly,
    golden_data,
    randn,
    seeded_model,
    seeded_state_dict,
)

OFFICIAL_KEYS, GOLDEN, GOLDEN_OUT = golden_data("pointe_image")
OFFICIAL_CONFIGS = {
    "base40M": PointDiffusionConfig.base40m(),
    "base300M": PointDiffusionConfig.base300m(),
    "base1B": PointDiffusionConfig.base1b(),
    "base40M-imagevec": PointDiffusionConfig.base40m_imagevec(),
}


def build_official(name: str, device: str = "cpu") -> torch.nn.Module:
    with torch.device(device):
        return PointCloudSDFModel(SDFConfig.official()) if name == "sdf" else build_model(OFFICIAL_CONFIGS[name])


@pytest.mark.parametrize("name", sorted(OFFICIAL_KEYS))
def test_state_dict_matches_official_keys_and_shapes(name: str) -> None:
    model = build_official(name, device="meta")  # base1B at real size without allocating 4 GB
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == OFFICIAL_KEYS[name]


@pytest.mark.parametrize("name", ["base40M", "base40M-imagevec", "sdf"])
def test_official_state_dict_loads_strictly(name: str) -> None:
    assert_loads_strictly(build_official(name), OFFICIAL_KEYS[name])


def _grid_config(case: dict) -> PointDiffusionConfig:
    shape = dict(width=case["width"], layers=case["layers"], heads=case["heads"], n_ctx=case["n_ctx"])
    grid = dict(cond_width=case["grid_dim"], grid_tokens=case["grid_size"] ** 2)
    if case["kind"] == "image_grid":
        return PointDiffusionConfig(model_type="image_grid", **grid, **shape)
    return PointDiffusionConfig(
        model_type="upsample",
        cond_ctx=case["cond_ctx"],
        channel_scales=POINTE_CHANNEL_SCALES,
        channel_biases=POINTE_CHANNEL_BIASES,
        **grid,
        **shape,
    )


@pytest.mark.parametrize("case", GOLDEN["model_cases"], ids=lambda c: c["name"])
def test_image_models_match_official_outputs(case: dict) -> None:
    """A guided batch: row 0 conditioned on a random grid, row 1 all zeros (the unconditional half)."""
    seed, B = case["seed"], 2
    model = seeded_model(_grid_config(case), seed)
    x = randn((B, 6, case["n_ctx"]), seed + 1)
    grid = randn((B, case["grid_dim"], case["grid_size"] ** 2), seed + 3)
    grid[1] = 0
    t = torch.tensor(case["t"])
    with torch.no_grad():
        if case["kind"] == "image_grid":
            out = model(x, t, grid)
        else:
            low = randn((B, 6, case["cond_ctx"]), seed + 2)
            low = torch.cat([low[:, :3] * 0.5, (low[:, 3:] * 60 + 128).clamp(0, 255)], dim=1)
            low[1] = 0
            out = model(x, t, low, grid)
    torch.testing.assert_close(out, torch.from_numpy(GOLDEN_OUT[case["name"]]), atol=ATOL, rtol=0)


def test_unconditional_grid_none_is_zeros() -> None:
    model = seeded_model(PointDiffusionConfig.tiny_image_grid(), 1)
    x, t = randn((2, 6, 64), 2), torch.tensor([5, 900])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, None), model(x, t, torch.zeros(2, 8, 4)))


@pytest.mark.parametrize("case", GOLDEN["sdf_cases"], ids=lambda c: c["name"])
def test_sdf_matches_official_outputs(case: dict) -> None:
    seed, B = case["seed"], case["batch"]
    model = PointCloudSDFModel(SDFConfig.official()).eval()
    model.load_state_dict(seeded_state_dict(model, seed), strict=True)  # type: ignore[arg-type]
    points = randn((B, 3, case["n_points"]), seed + 1) * 0.3
    queries = (torch.rand((B, 3, case["n_queries"]), generator=torch.Generator().manual_seed(seed + 2)) - 0.5) * 1.02
    with torch.no_grad():
        out = model(queries, points)
    torch.testing.assert_close(out, torch.from_numpy(GOLDEN_OUT[case["name"]]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", GOLDEN["sampler_cases"], ids=lambda c: c["name"])
def test_image_chain_matches_official(case: dict) -> None:
    """The official image2pointcloud chain: both stages guided at 3.0 on the image grid."""
    grid_shape = dict(grid_size=case["grid_size"], grid_dim=case["grid_dim"])
    base = seeded_model(_grid_config({**case["base"], **grid_shape, "kind": "image_grid"}), case["base_seed"])
    upsampler = seeded_model(_grid_config({**case["upsample"], **grid_shape, "kind": "upsample"}), case["upsample_seed"])
    grid = randn((1, case["grid_dim"], case["grid_size"] ** 2), case["grid_seed"])
    guidance = tuple(case["guidance_scale"])
    assert_chain_matches(case, base, upsampler, guidance, {"grid": grid}, GOLDEN_OUT[case["name"]], upsampler_cond={"grid": grid})


MESH = json.loads((DATA / "pointe_mesh_golden.json").read_text())
MESH_OUT = np.load(DATA / "pointe_mesh_golden.npz")


def test_mesh_matches_official_marching_cubes() -> None:
    """The official marching_cubes_mesh on the real-size SDF model: the grid, the mesh and its colours."""
    model = PointCloudSDFModel(SDFConfig.official()).eval()
    model.load_state_dict(seeded_state_dict(model, MESH["seed"]), strict=True)  # type: ignore[arg-type]
    points = (randn((MESH["n_points"], 3), MESH["seed"] + 1) * 0.25).numpy()
    colors = (torch.rand((MESH["n_points"], 3), generator=torch.Generator().manual_seed(MESH["seed"] + 2)) * 255)
    colors = colors.round().numpy().astype(np.uint8)
    volume = sdf_grid(model, points, MESH["grid_size"], MESH["side_length"], batch_size=1000)
    # Random weights predict no zero crossing: both codes then centre the values before marching cubes.
    assert np.all(volume < 0)
    np.testing.assert_allclose(volume - volume.mean(), MESH_OUT["volume"], atol=ATOL, rtol=0)
    vertices, faces, _, vertex_colors = point_cloud_mesh(model, points, colors, MESH["grid_size"], MESH["side_length"])
    np.testing.assert_array_equal(faces, MESH_OUT["faces"])
    # A vertex sits where the interpolated values cross zero: a 1e-5 difference in values over a gentle
    # slope moves it by ~1e-4, still 1/500 of the 0.068 voxel.
    np.testing.assert_allclose(vertices, MESH_OUT["verts"], atol=1e-3, rtol=0)
    np.testing.assert_array_equal(vertex_colors, MESH_OUT["colors"])

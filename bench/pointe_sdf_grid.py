"""A mesh from a 4096-point cloud with the real-size SDF model (random weights), ours against the official
pc_to_mesh on the same weights: the SDF evaluated on a grid of 128^3 points (official: query batches of
4096), then marching cubes and nearest-point colours, on CPU. The grid evaluation is nearly all of it.
Prints both times and their ratio.

    python bench/pointe_sdf_grid.py --official /path/to/point-e [--grid-size 128] [--threads N]

Without an official checkout it says so and exits cleanly (see bench/pointe_official.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pointe_official import arguments, official_modules  # noqa: E402
from modules.pointe.config import SDFConfig  # noqa: E402
from modules.pointe.mesh import point_cloud_mesh  # noqa: E402
from modules.pointe.sdf import PointCloudSDFModel  # noqa: E402


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--grid-size", type=int, default=128)
    args = parser.parse_args()
    official = official_modules(args, "pointe_sdf_grid")
    if official is None:
        return

    ours = PointCloudSDFModel(SDFConfig.official()).eval()
    theirs = official["model_from_config"](official["MODEL_CONFIGS"]["sdf"], torch.device("cpu")).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    rng = np.random.default_rng(0)
    points = (rng.normal(size=(4096, 3)) * 0.2).astype(np.float32)
    colors = rng.integers(0, 256, (4096, 3), dtype=np.uint8)
    cloud = official["PointCloud"](coords=points, channels={c: colors[:, i] / 255.0 for i, c in enumerate("RGB")})

    start = time.perf_counter()
    vertices, faces, _, _ = point_cloud_mesh(ours, points, colors, args.grid_size)
    ours_seconds = time.perf_counter() - start
    start = time.perf_counter()
    mesh = official["marching_cubes_mesh"](cloud, theirs, batch_size=4096, grid_size=args.grid_size)
    official_seconds = time.perf_counter() - start

    print(f"SDF mesh over a {args.grid_size}^3 grid, 4096-point cloud, {args.threads} threads")
    print(f"  ours     {ours_seconds:.1f} s ({len(faces):,} faces)")
    print(f"  official {official_seconds:.1f} s ({len(mesh.faces):,} faces)")
    print(f"ratio official / ours: {official_seconds / ours_seconds:.2f}x")


if __name__ == "__main__":
    main()

"""Point cloud -> coloured triangle mesh, as the official pc_to_mesh does: the SDF model's signed distances
on a regular grid, marching cubes (scikit-image) at level 0, and each vertex coloured like its nearest point.

References: openai/point-e, point_e/util/pc_to_mesh.py (grid layout, cube side 1.02, face winding).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .sdf import PointCloudSDFModel

OnStep = Callable[[int, int], None]  # (query batches done, total)
ShouldStop = Callable[[], bool]

#: The official grid: 128 samples per axis over a cube of side 1.02 centred on the origin.
GRID_SIZE = 128
SIDE_LENGTH = 1.02
#: Query points per SDF evaluation; attention over the cloud is computed in chunks of this many.
QUERY_BATCH = 16384


class MeshingStopped(Exception):
    """should_stop() returned True during the SDF grid evaluation."""


@torch.no_grad()
def sdf_grid(
    model: PointCloudSDFModel,
    points: np.ndarray,
    grid_size: int = GRID_SIZE,
    side_length: float = SIDE_LENGTH,
    batch_size: int = QUERY_BATCH,
    on_step: OnStep | None = None,
    should_stop: ShouldStop | None = None,
) -> np.ndarray:
    """points: (N, 3) xyz in data space -> (G, G, G) signed distances indexed [x, y, z]."""
    device = next(model.parameters()).device
    cloud = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).T[None].to(device)  # (1, 3, N)
    memory = model.encode(cloud)  # the latents' keys and values, shared by every query batch
    axis = torch.arange(grid_size, dtype=torch.float32, device=device) * (side_length / (grid_size - 1)) - side_length / 2
    total = grid_size**3
    steps = (total + batch_size - 1) // batch_size
    values = []
    for step, start in enumerate(range(0, total, batch_size)):
        if should_stop is not None and should_stop():
            raise MeshingStopped(f"meshing stopped after {step} of {steps} query batches")
        index = torch.arange(start, min(start + batch_size, total), device=device)
        # x varies slowest, z fastest, as the official grid: index = (x * G + y) * G + z.
        xyz = torch.stack([axis[index // grid_size**2], axis[index // grid_size % grid_size], axis[index % grid_size]])
        values.append(model.predict_sdf(xyz[None], memory)[0])  # (Q,)
        if on_step is not None:
            on_step(step + 1, steps)
    return torch.cat(values).view(grid_size, grid_size, grid_size).float().cpu().numpy()


def marching_cubes(volume: np.ndarray, side_length: float = SIDE_LENGTH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G, G, G) signed distances -> (vertices (V, 3), faces (F, 3), normals (V, 3)) in data space."""
    from skimage.measure import marching_cubes as skimage_marching_cubes

    grid_size = volume.shape[0]
    voxel = side_length / (grid_size - 1)
    if np.all(volume < 0) or np.all(volume > 0):
        # No zero crossing (a degenerate prediction): centre the values so marching cubes still finds a surface.
        volume = volume - volume.mean()
    vertices, faces, normals, _ = skimage_marching_cubes(volume, level=0, allow_degenerate=False, spacing=(voxel,) * 3)
    faces = faces[:, [1, 0, 2]]  # scikit-image winds left-handed; meshes want right-handed (outward) faces
    return vertices - side_length / 2, faces, normals


def nearest_colors(vertices: np.ndarray, points: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Each vertex takes the colour of its nearest cloud point: (V, 3) uint8."""
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(points).query(vertices)
    return colors[nearest]


def point_cloud_mesh(
    model: PointCloudSDFModel,
    points: np.ndarray,
    colors: np.ndarray,
    grid_size: int = GRID_SIZE,
    side_length: float = SIDE_LENGTH,
    on_step: OnStep | None = None,
    should_stop: ShouldStop | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(points (N, 3), colors (N, 3) uint8) -> (vertices, faces, normals, vertex colours (V, 3) uint8)."""
    volume = sdf_grid(model, points, grid_size, side_length, on_step=on_step, should_stop=should_stop)
    vertices, faces, normals = marching_cubes(volume, side_length)
    return vertices, faces, normals, nearest_colors(vertices, points, colors)

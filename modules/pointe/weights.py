"""Point-E weights: loading the official checkpoints strictly (see checkpoints.py for fetching them),
and our own folder format.

Our format (`save_pretrained` / `from_pretrained`): a folder with config.json (PointDiffusionConfig, or
SDFConfig for the SDF model) and model.safetensors (the same keys as the official checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .checkpoints import OFFICIAL_CHECKPOINTS, OnProgress, checkpoint_path
from .config import PointDiffusionConfig, SDFConfig
from .model import PointDiffusionTransformer, build_model
from .sdf import PointCloudSDFModel

PointEModel = PointDiffusionTransformer | PointCloudSDFModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def load_official(
    name: str,
    cache_dir: str | Path | None = None,
    local_file: str | Path | None = None,
    on_progress: OnProgress | None = None,
    device: torch.device | str = "cpu",
) -> PointEModel:
    """Builds the model of an official checkpoint and loads it strictly; eval mode."""
    path = checkpoint_path(name, cache_dir, local_file, on_progress)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = build(OFFICIAL_CHECKPOINTS[name].config)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def build(config: PointDiffusionConfig | SDFConfig) -> PointEModel:
    return PointCloudSDFModel(config) if isinstance(config, SDFConfig) else build_model(config)


def save_pretrained(model: PointEModel, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state_dict, folder / WEIGHTS_NAME)


def from_pretrained(folder: str | Path, device: torch.device | str = "cpu") -> PointEModel:
    """Loads a folder written by save_pretrained, strictly; eval mode."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a Point-E model folder: {name} is missing")
    data = json.loads((folder / CONFIG_NAME).read_text())
    config = SDFConfig.from_dict(data) if data.get("model_type") == "sdf" else PointDiffusionConfig.from_dict(data)
    model = build(config)
    model.load_state_dict(load_file(folder / WEIGHTS_NAME), strict=True)
    return model.to(device).eval()

"""Point-E weights: the official checkpoints (downloaded once, cached) and our own folder format.

Cache folder, first that is set:
  1. $ATELIER_CACHE/point-e
  2. $XDG_CACHE_HOME/atelier/point-e
  3. ~/.cache/atelier/point-e
Setting ATELIER_OFFLINE=1 (or HF_HUB_OFFLINE=1) forbids downloads: a missing file is then an error
that names it, its URL and the folder to put it in.

Our format (`save_pretrained` / `from_pretrained`): a folder with config.json (PointDiffusionConfig)
and model.safetensors (the same keys as the official checkpoint).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

from .config import PointDiffusionConfig
from .model import PointDiffusionTransformer, build_model

OnProgress = Callable[[int, int | None], None]  # (bytes done, total bytes or None when unknown)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class OfficialCheckpoint:
    name: str
    url: str
    config: PointDiffusionConfig

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


OFFICIAL_CHECKPOINTS = {
    "base40M-textvec": OfficialCheckpoint(
        "base40M-textvec",
        "https://openaipublic.azureedge.net/main/point-e/base_40m_textvec.pt",
        PointDiffusionConfig.base40m_textvec(),
    ),
    "upsample": OfficialCheckpoint(
        "upsample",
        "https://openaipublic.azureedge.net/main/point-e/upsample_40m.pt",
        PointDiffusionConfig.upsample(),
    ),
}


class CheckpointUnavailableError(FileNotFoundError):
    """An official checkpoint is neither cached nor downloadable."""


def default_cache_dir() -> Path:
    if os.environ.get("ATELIER_CACHE"):
        return Path(os.environ["ATELIER_CACHE"]) / "point-e"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "atelier" / "point-e"
    return Path.home() / ".cache" / "atelier" / "point-e"


def _offline() -> bool:
    return any(os.environ.get(k, "") in ("1", "true", "True") for k in ("ATELIER_OFFLINE", "HF_HUB_OFFLINE"))


def checkpoint_path(
    name: str,
    cache_dir: str | Path | None = None,
    local_file: str | Path | None = None,
    on_progress: OnProgress | None = None,
) -> Path:
    """The local path of an official checkpoint: local_file if given, else the cached file, else a
    fresh download into the cache. Raises CheckpointUnavailableError when none of these works."""
    if name not in OFFICIAL_CHECKPOINTS:
        raise ValueError(f"unknown Point-E checkpoint {name!r}; known: {sorted(OFFICIAL_CHECKPOINTS)}")
    if local_file is not None:
        if not Path(local_file).is_file():
            raise CheckpointUnavailableError(f"local_file for {name!r} does not exist: {local_file}")
        return Path(local_file)
    checkpoint = OFFICIAL_CHECKPOINTS[name]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / checkpoint.filename
    if path.is_file():
        return path
    hint = f"download {checkpoint.url} and put it in {folder} (folder set by ATELIER_CACHE or XDG_CACHE_HOME)"
    if _offline():
        raise CheckpointUnavailableError(f"{checkpoint.filename} is not cached and downloads are off: {hint}")
    try:
        download(checkpoint.url, path, on_progress)
    except (urllib.error.URLError, OSError) as e:
        raise CheckpointUnavailableError(f"could not download {checkpoint.filename} ({e}): {hint}") from e
    return path


def download(url: str, path: Path, on_progress: OnProgress | None = None) -> None:
    """Streams url to path through a .part file, so an interrupted download never looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length is not None else None
        done = 0
        with open(part, "wb") as f:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                done += len(chunk)
                if on_progress is not None:
                    on_progress(done, total)
    if total is not None and done != total:
        part.unlink()
        raise OSError(f"{url}: got {done} bytes, expected {total}")
    part.replace(path)


def load_official(
    name: str,
    cache_dir: str | Path | None = None,
    local_file: str | Path | None = None,
    on_progress: OnProgress | None = None,
    device: torch.device | str = "cpu",
) -> PointDiffusionTransformer:
    """Builds the model of an official checkpoint and loads it strictly; eval mode."""
    path = checkpoint_path(name, cache_dir, local_file, on_progress)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(OFFICIAL_CHECKPOINTS[name].config)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def save_pretrained(model: PointDiffusionTransformer, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state_dict, folder / WEIGHTS_NAME)


def from_pretrained(folder: str | Path, device: torch.device | str = "cpu") -> PointDiffusionTransformer:
    """Loads a folder written by save_pretrained, strictly; eval mode."""
    folder = Path(folder)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} is not a Point-E model folder: {name} is missing")
    model = build_model(PointDiffusionConfig.from_dict(json.loads((folder / CONFIG_NAME).read_text())))
    model.load_state_dict(load_file(folder / WEIGHTS_NAME), strict=True)
    return model.to(device).eval()

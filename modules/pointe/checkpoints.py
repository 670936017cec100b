"""The official Point-E checkpoints: where they come from, where they are cached, and the download.

Cache folder, first that is set:
  1. $ATELIER_CACHE/point-e
  2. $XDG_CACHE_HOME/atelier/point-e
  3. ~/.cache/atelier/point-e
Setting ATELIER_OFFLINE=1 (or HF_HUB_OFFLINE=1) forbids downloads: a missing file is then an error
that names it, its URL and the folder to put it in.

No torch here: the app asks whether the files are present before any model library is imported.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import PointDiffusionConfig, SDFConfig

OnProgress = Callable[[int, int | None], None]  # (bytes done, total bytes or None when unknown)

_CHUNK = 1 << 20


@dataclass(frozen=True)
class OfficialCheckpoint:
    name: str
    url: str
    config: PointDiffusionConfig | SDFConfig
    parameters: int  # float32 on disk: about 4 bytes each

    @property
    def approx_bytes(self) -> int:
        return 4 * self.parameters

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_BLOB = "https://openaipublic.azureedge.net/main/point-e/"
OFFICIAL_CHECKPOINTS = {
    c.name: c
    for c in (
        OfficialCheckpoint("base40M-textvec", _BLOB + "base_40m_textvec.pt", PointDiffusionConfig.base40m_textvec(), 40_333_836),
        OfficialCheckpoint("base40M-imagevec", _BLOB + "base_40m_imagevec.pt", PointDiffusionConfig.base40m_imagevec(), 40_333_836),
        OfficialCheckpoint("base40M", _BLOB + "base_40m.pt", PointDiffusionConfig.base40m(), 40_466_956),
        OfficialCheckpoint("base300M", _BLOB + "base_300m.pt", PointDiffusionConfig.base300m(), 311_778_316),
        OfficialCheckpoint("base1B", _BLOB + "base_1b.pt", PointDiffusionConfig.base1b(), 1_244_311_564),
        OfficialCheckpoint("upsample", _BLOB + "upsample_40m.pt", PointDiffusionConfig.upsample(), 40_470_552),
        OfficialCheckpoint("sdf", _BLOB + "sdf.pt", SDFConfig.official(), 9_481_985),
    )
}
#: The official base checkpoints by file name (how models.yaml picks one: `source: {file: base_40m.pt}`).
BASE_CHECKPOINT_FILES = {c.filename: c.name for c in OFFICIAL_CHECKPOINTS.values() if c.name.startswith("base")}


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

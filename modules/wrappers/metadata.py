"""What an output file says about how it was made: one dict of parameters per result, in each format's own place.

A wrapper builds one `Parameters` dict per result with `generation_parameters` (prompt, model, every
setting, and what was actually used, such as the seed drawn for -1) and may add its own fields: plain
strings and numbers only, so every format can hold them. The writers below put that same dict into:
- WAV: RIFF INFO chunks, through soundfile (`riff_info`): title = prompt, artist = model, comment = the
  whole dict as JSON; audio editors and `ffprobe` show them.
- PLY: header comments, one `comment key: value` line per field with the value as ASCII JSON, since PLY
  headers are ASCII lines (`with_ply_comments`).
- GLB: the glTF `asset.extras` object, as is (the 3D wrapper hands it to trimesh's exporter).
PNGs carry AUTOMATIC1111's `parameters` text instead (modules/wrappers/text_to_image.py), with the same
model hash that `file_sha256` computes here.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

from modules.catalog import ModelEntry
from modules.wrappers.base import Settings

#: One result's record: field name -> plain string or number.
Parameters = dict[str, str | int | float]

SOFTWARE = "Atelier"


def generation_parameters(entry: ModelEntry, prompt: str, settings: Settings, **used: str | int | float) -> Parameters:
    """The prompt, the model and every setting of one result, with the values actually `used` on top."""
    return {
        "prompt": prompt,
        "model": entry.name,
        "model_id": entry.id,  # the catalogue id: pick it in Atelier to make the same again
        **settings.model_dump(),
        **used,
        "software": SOFTWARE,
    }


def riff_info(parameters: Parameters) -> dict[str, str]:
    """soundfile's RIFF INFO fields (INAM, IART, ISFT, ICMT, ICRD) for one WAV."""
    return {
        "title": str(parameters["prompt"]),
        "artist": str(parameters["model"]),
        "software": SOFTWARE,
        "comment": json.dumps(parameters, ensure_ascii=False),
        "date": time.strftime("%Y-%m-%d"),
    }


def with_ply_comments(ply: bytes, parameters: Parameters) -> bytes:
    """A PLY file's bytes with one header comment per parameter, placed right after the `format` line."""
    format_end = ply.index(b"\n", ply.index(b"\nformat ") + 1) + 1
    if format_end > ply.index(b"end_header\n"):
        raise ValueError("not a PLY header")
    # ASCII JSON keeps every value on one ASCII line, as PLY headers must be (newlines and accents escaped).
    comments = "".join(f"comment {key}: {json.dumps(value)}\n" for key, value in parameters.items())
    return ply[:format_end] + comments.encode("ascii") + ply[format_end:]


def cache_dir() -> Path:
    """Atelier's own cache folder: $ATELIER_CACHE, else $XDG_CACHE_HOME/atelier, else ~/.cache/atelier."""
    base = os.environ.get("ATELIER_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "atelier"
    return Path(base)


_hashes_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (hex), computed once per version of the file.

    Hashing a multi-GB checkpoint takes seconds, so digests are kept in the cache folder's hashes.json,
    keyed by the resolved path and valid while its size and modification time stay the same (as
    AUTOMATIC1111 keeps its own in cache.json).
    """
    path = path.resolve()
    stat = path.stat()
    stamp = [stat.st_size, stat.st_mtime_ns]
    store = cache_dir() / "hashes.json"
    with _hashes_lock:
        try:
            known = json.loads(store.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
        entry = known.get(str(path))
        if isinstance(entry, dict) and entry.get("stamp") == stamp:
            return entry["sha256"]
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        known[str(path)] = {"stamp": stamp, "sha256": digest}
        store.parent.mkdir(parents=True, exist_ok=True)
        scratch = store.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps(known, indent=1), encoding="utf-8")
        scratch.replace(store)  # atomic: another process never reads half a file
        return digest

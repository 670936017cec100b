"""Reading an uploaded image safely: one loader every image-taking wrapper shares.

Policy, stated once:
- Anything PIL cannot identify is refused as "not an image"; a truncated or corrupt file is refused
  rather than half-decoded (PIL's LOAD_TRUNCATED_IMAGES is left off).
- The declared size is checked against the host's pixel limit before any pixel is decoded, so a small
  file that claims to be enormous (a decompression bomb) costs nothing. PIL's own bomb error and
  warning are caught and reported the same way.
- Animated images (GIF, APNG, WebP) are not refused: the first frame is used, and a note says so.
- EXIF orientation is applied, then every mode becomes 8-bit RGB: CMYK and palette through PIL's
  conversions, 16-bit and float greyscale scaled to 8 bits (not clipped), and transparency composited
  onto white (a model fed RGBA's hidden colour under alpha 0 would describe what nobody sees).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from modules.wrappers.base import InvalidInput

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")


@dataclass(frozen=True)
class LoadedImage:
    """An upload as a model should see it, and what was done to get there."""

    image: Image.Image  # 8-bit RGB, upright
    format: str
    original_mode: str
    notes: tuple[str, ...] = field(default=())


def load_image(source: str | Path | bytes | Image.Image, max_pixels: int, name: str = "image") -> LoadedImage:
    """Open, validate and normalise an upload; raises InvalidInput naming `name` and what is wrong."""
    if source is None or source == "":
        raise InvalidInput(f"{name} is missing: upload a picture first")
    if isinstance(source, Image.Image):
        return _normalise(source, "in-memory", [])
    label = "the upload" if isinstance(source, bytes) else Path(source).name
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with warnings.catch_warnings():
        # We check the declared size ourselves below, with the host's limit and a clearer message.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            opened = Image.open(stream)
        except UnidentifiedImageError:
            raise InvalidInput(f"{name}: {label} is not an image this server can read (PNG, JPEG, WebP, GIF, ...)") from None
        except Image.DecompressionBombError as exc:
            raise InvalidInput(f"{name}: {label} declares an enormous size and was refused unread ({exc})") from None
        except FileNotFoundError:
            raise InvalidInput(f"{name}: {label} does not exist (was the upload interrupted?)") from None
    with opened:
        width, height = opened.size
        if width * height > max_pixels:
            raise InvalidInput(
                f"{name}: {label} declares {width}x{height} = {width * height:,} pixels; the limit on this server "
                f"is {max_pixels:,} (a file this small claiming that much is a decompression bomb)"
            )
        notes: list[str] = []
        if getattr(opened, "is_animated", False):
            notes.append(f"animated {opened.format} with {getattr(opened, 'n_frames', '?')} frames: the first frame is used")
            opened.seek(0)
        try:
            opened.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidInput(f"{name}: {label} is truncated or corrupt and cannot be decoded ({exc})") from None
        return _normalise(opened, opened.format or "unknown", notes)


def _normalise(image: Image.Image, format: str, notes: list[str]) -> LoadedImage:
    original_mode = image.mode
    orientation = _orientation(image)
    if orientation not in (None, 1):
        notes.append(f"EXIF orientation {orientation} applied")
    rgb = to_rgb(ImageOps.exif_transpose(image))
    if original_mode != "RGB":
        notes.append(f"{original_mode} converted to RGB")
    return LoadedImage(rgb, format, original_mode, tuple(notes))


def _orientation(image: Image.Image) -> int | None:
    try:
        return image.getexif().get(0x0112)
    except Exception:  # a broken EXIF block is not worth refusing the picture for
        return None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, keeping the picture's look (see the module docstring)."""
    if image.mode in _WIDE_GREY_MODES:
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") and values.max(initial=0) > 255 else 255.0
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            top = 1.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image

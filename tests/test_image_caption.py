"""Image and Caption tabs end to end: the tiny models on a real server on loopback, driven by gradio_client.

Covers seeds that reproduce pixels, A1111 `parameters` read back from the PNG, captions of uploads, the
bridge both ways, every kind of bad upload, out-of-range settings, Stop, and the memory manager holding
both models and evicting one when the budget only fits one.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from modules.memory import MemoryManager
from modules.tiny import build_tiny_catalog
from modules.wrappers import build_wrapper
from modules.wrappers.base import InvalidInput
from tests.conftest import AppServer, stop_when

IMAGE, CAPTION = "tiny-sd", "tiny-blip"


def generate(client: Client, prompt: str = "a red cat", seed: int | None = 7, **settings: object) -> tuple[list[Path], int, str, list]:
    """One /generate_image call: the PNG paths, the seed used, the stats line and every streamed output."""
    job = client.submit(
        prompt,
        negative_prompt=settings.get("negative_prompt", ""),
        model=settings.get("model", IMAGE),
        seed=-1 if seed is None else seed,
        steps=settings.get("num_steps", 4),
        guidance=settings.get("guidance", 5.0),
        width=settings.get("width", 64),
        height=settings.get("height", 64),
        batch=settings.get("batch", 1),
        scheduler=settings.get("scheduler", "default"),
        api_name="/generate_image",
    )
    gallery, files, seed_used, stats = job.result(timeout=120)
    return [Path(item["image"]) for item in gallery], int(seed_used), stats, job.outputs()


def caption(client: Client, image: Path | str, prefix: str = "", **settings: object) -> tuple[Path, str, str]:
    """One /caption call: the image the model saw, the caption and the stats line."""
    seen, text, stats = client.predict(
        handle_file(str(image)),
        model=settings.get("model", CAPTION),
        prefix=prefix,
        decoding=settings.get("decoding", "beam"),
        num_beams=settings.get("num_beams", 2),
        top_p=0.9,
        temperature=1.0,
        max_new_tokens=settings.get("max_length", 8),
        api_name="/caption",
    )
    return Path(seen), text, stats


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# -- generation --------------------------------------------------------------------------------------


def test_random_seed_is_reported_and_reproduces_the_same_pixels(tiny_client: Client) -> None:
    first, used, stats, outputs = generate(tiny_client, seed=None)
    again, used_again, _, _ = generate(tiny_client, seed=used)
    assert used_again == used and f"seed {used}" in stats
    assert np.array_equal(pixels(first[0]), pixels(again[0])), "the same seed gave different pixels"
    assert "steps/s" in stats and "4 steps" in stats
    progress = [o[-1] for o in outputs if isinstance(o[-1], str) and o[-1].startswith("Denoising")]
    assert progress and progress[0] == "Denoising: step 1 of 4", outputs  # later steps are throttled


def test_png_carries_a1111_parameters_and_batch_seeds_count_up(tiny_client: Client) -> None:
    paths, used, _, _ = generate(
        tiny_client, "a lighthouse at dusk", seed=1234, negative_prompt="blurry", batch=2, scheduler="euler-a", guidance=3.5
    )
    assert used == 1234 and len(paths) == 2
    weights = build_tiny_catalog().tasks["image"].get(IMAGE).source.local_folder() / "unet" / "diffusion_pytorch_model.safetensors"
    model_hash = hashlib.sha256(weights.read_bytes()).hexdigest()[:10]
    for path, seed in zip(paths, (1234, 1235)):
        text = Image.open(path).info["parameters"]
        assert text.splitlines() == [
            "a lighthouse at dusk",
            "Negative prompt: blurry",
            f"Steps: 4, Sampler: Euler a, Schedule type: Uniform, CFG scale: 3.5, Seed: {seed}, Size: 64x64, "
            f"Model hash: {model_hash}, Model: tiny-sd, RNG: CPU",
        ]
    alone, _, _, _ = generate(tiny_client, "a lighthouse at dusk", seed=1235, negative_prompt="blurry", scheduler="euler-a", guidance=3.5)
    # A batch of 2 and a batch of 1 run different BLAS blockings, so float rounding may move a few pixels
    # by a level; anything beyond that means the seed did not carry.
    difference = np.abs(pixels(paths[1]).astype(int) - pixels(alone[0]).astype(int))
    assert difference.max() <= 2 and (difference > 0).mean() < 0.02, "image 2 of a batch is not remade by its own seed"


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"width": 100}, "width=100: Input should be a multiple of 8"),
        ({"height": 2048}, "height: Value 2048 is greater than maximum value 1024"),  # the host's --max-image-side
        ({"width": 32}, "width: Value 32 is less than minimum value 64"),
        ({"num_steps": 0}, "steps: Value 0 is less than minimum value 1"),
        ({"num_steps": 500}, "steps: Value 500 is greater than maximum value 150"),
        ({"batch": 20}, "batch: Value 20 is greater than maximum value 8"),
        ({"guidance": -1}, "guidance: Value -1 is less than minimum value 0"),
        ({"scheduler": "made-up"}, "scheduler: Value: made-up is not in the list of choices"),
        ({"model": "org/anything"}, "model: Value: org/anything is not in the list of choices"),
    ],
)
def test_out_of_range_settings_get_a_clear_error(tiny_client: Client, settings: dict, expected: str) -> None:
    with pytest.raises(Exception) as caught:
        generate(tiny_client, **settings)
    assert expected in str(caught.value)


def test_the_wrapper_checks_what_the_sliders_check() -> None:
    """Callers other than the page (scripts, other tabs) meet the same limits, named by argument."""
    wrapper = build_wrapper(build_tiny_catalog().tasks["image"].models[0], MemoryManager("cpu"))
    for settings, expected in [
        ({"height": 2048}, "height=2048 is over this server's limit of 1024 pixels (--max-image-side)"),
        ({"width": 32}, "width=32: Input should be greater than or equal to 64"),
        ({"num_steps": 500}, "num_steps=500: Input should be less than or equal to 150"),
        ({"scheduler": "made-up"}, "scheduler='made-up': Input should be 'default', 'euler'"),
    ]:
        with pytest.raises(InvalidInput) as caught:
            next(wrapper.generate("a cat", **settings))
        assert expected in str(caught.value)


def test_empty_prompt_is_refused(tiny_client: Client) -> None:
    with pytest.raises(Exception, match="prompt is empty"):
        generate(tiny_client, "   ")


def test_stop_interrupts_denoising_and_releases_the_lease(tiny_client: Client) -> None:
    job = tiny_client.submit("a long one", model=IMAGE, seed=1, steps=150, width=64, height=64, api_name="/generate_image")
    stop_when(tiny_client, job, f"image/{IMAGE}", lambda outputs: any(str(o[-1]).startswith("Denoising: step") for o in outputs))
    steps = [o[-1] for o in job.outputs() if isinstance(o[-1], str)]
    assert len(steps) < 150 and not any(s.startswith("Done") for s in steps), "denoising ran to the end after Stop"


# -- captioning and the bridge -----------------------------------------------------------------------


def test_caption_an_upload_with_a_prefix(tiny_client: Client, tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (50, 40), (200, 30, 30)).save(path)
    seen, text, stats = caption(tiny_client, path, prefix="a photo of")
    assert text.startswith("a photo of") and len(text.split()) > 3
    assert "tokens/s" in stats and Image.open(seen).size == (50, 40)
    _, sampled, _ = caption(tiny_client, path, decoding="nucleus")
    assert sampled.strip()


def test_bridge_round_trip_text_image_text_prompt(tiny_client: Client) -> None:
    images, _, _, _ = generate(tiny_client, "a blue dog", seed=3, batch=2)
    sent = tiny_client.predict([{"image": handle_file(str(p)), "caption": None} for p in images], api_name="/caption_this")
    assert np.array_equal(pixels(Path(sent)), pixels(images[0])), "the bridge did not send the selected image"
    assert "parameters" in Image.open(sent).info, "the bridge lost the PNG's parameters"
    _, text, _ = caption(tiny_client, sent)
    prompt = tiny_client.predict(text, api_name="/use_as_prompt")
    assert prompt == text.strip() and prompt
    with pytest.raises(Exception, match="generate an image first"):
        tiny_client.predict([], api_name="/caption_this")
    with pytest.raises(Exception, match="caption an image first"):
        tiny_client.predict("  ", api_name="/use_as_prompt")


# -- bad and unusual uploads -------------------------------------------------------------------------


def png_bytes(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def declared_size_png(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims `width` x `height` (a decompression bomb's calling card)."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (20, 20), colour) for colour in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(buffer, "JPEG", quality=95)  # pure red in CMYK
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    return png_bytes(image, transparency=1)  # every pixel is the transparent index


def rgba_transparent_red() -> bytes:
    return png_bytes(Image.new("RGBA", (16, 16), (255, 0, 0, 0)))


def sixteen_bit_grey() -> bytes:
    return png_bytes(Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)))


def exif_rotated_jpeg() -> bytes:
    image = Image.new("RGB", (40, 20), (0, 128, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def truncated_png() -> bytes:
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = png_bytes(noisy)
    return data[: len(data) // 2]


REFUSED = [
    ("notes.png", lambda: b"hello, I am a text file\n" * 10, "is not an image this server can read"),
    ("notes.txt", lambda: b"plain text", "Invalid file type"),
    ("half.png", truncated_png, "is truncated or corrupt"),
    ("bomb.png", lambda: declared_size_png(10_000, 10_000), "declares 10000x10000 = 100,000,000 pixels; the limit"),
    ("huge-bomb.png", lambda: declared_size_png(100_000, 100_000), "declares an enormous size and was refused unread"),
]


@pytest.mark.parametrize(("name", "build", "expected"), REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_uploads_get_a_clear_message(tiny_client: Client, tmp_path: Path, name: str, build, expected: str) -> None:
    path = tmp_path / name
    path.write_bytes(build())
    with pytest.raises(Exception) as caught:
        caption(tiny_client, path)
    assert expected in str(caught.value)


def near(colour: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 24) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected))


ACCEPTED = [
    ("anim.gif", animated_gif, "first frame is used", (20, 20), (255, 0, 0)),
    ("cmyk.jpg", cmyk_jpeg, "CMYK converted to RGB", (24, 24), (255, 0, 0)),
    ("palette.png", palette_with_transparency, "P converted to RGB", (16, 16), (255, 255, 255)),
    ("rgba.png", rgba_transparent_red, "RGBA converted to RGB", (16, 16), (255, 255, 255)),
    ("grey16.png", sixteen_bit_grey, "converted to RGB", (16, 16), (128, 128, 128)),
    ("rotated.jpg", exif_rotated_jpeg, "EXIF orientation 6 applied", (20, 40), (0, 128, 255)),
]


@pytest.mark.parametrize(("name", "build", "note", "size", "colour"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_unusual_uploads_are_normalised_and_say_so(
    tiny_client: Client, tmp_path: Path, name: str, build, note: str, size: tuple[int, int], colour: tuple[int, int, int]
) -> None:
    path = tmp_path / name
    path.write_bytes(build())
    seen, text, stats = caption(tiny_client, path)
    assert text.strip() and note in stats
    image = Image.open(seen).convert("RGB")
    assert image.size == size
    assert near(image.getpixel((size[0] // 2, size[1] // 2)), colour), image.getpixel((size[0] // 2, size[1] // 2))


def test_server_keeps_serving_after_bad_uploads(tiny_client: Client, tmp_path: Path) -> None:
    path = tmp_path / "fine.png"
    Image.new("RGB", (32, 32), "green").save(path)
    assert caption(tiny_client, path)[1].strip()
    assert generate(tiny_client)[0]


# -- the memory manager ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_model_app(tiny_client: Client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """A second app whose budget fits the tiny image model at 128x128 or the captioner, never both."""
    generate(tiny_client)  # both tiny models loaded once, so their sizes are measured
    caption(tiny_client, Path(generate(tiny_client)[0][0]))
    sizes = {row["key"]: row["bytes"] for row in tiny_client.predict(api_name="/system_status") if row["bytes"]}
    catalog = build_tiny_catalog()
    manager = MemoryManager("cpu")
    image = build_wrapper(catalog.tasks["image"].models[0], manager)
    captioner = build_wrapper(catalog.tasks["caption"].models[0], manager)
    # Before its first load the manager can only go by the size on disk, which may be a little larger.
    image_weights = max(sizes[image.key], image.estimate_bytes())
    image_needs = image_weights + image.working_bytes(image.settings(width=128, height=128))
    caption_needs = sizes[captioner.key] + captioner.working_bytes(captioner.settings(num_beams=2, max_length=8))
    budget = image_needs + 2048
    assert caption_needs <= budget < image_needs + sizes[captioner.key], "the tiny sizes no longer make this test work"
    with AppServer(["--tiny", "--memory-budget", str(budget)], tmp_path_factory.mktemp("one-model")) as server:
        yield server


def test_budget_for_one_model_evicts_the_other(one_model_app: AppServer, tmp_path: Path) -> None:
    client = one_model_app.client()
    path = tmp_path / "x.png"
    Image.new("RGB", (32, 32), "blue").save(path)
    caption(client, path)
    states = {row["key"]: row["state"] for row in client.predict(api_name="/system_status")}
    assert states[f"caption/{CAPTION}"] == "on device" and f"image/{IMAGE}" in states
    generate(client, width=128, height=128)
    states = {row["key"]: row["state"] for row in client.predict(api_name="/system_status")}
    assert (states[f"image/{IMAGE}"], states[f"caption/{CAPTION}"]) == ("on device", "not loaded")

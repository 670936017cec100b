"""PointEPipeline on tiny random weights, the save/load round trip, and checkpoint handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.pointe import checkpoints, weights
from modules.pointe.checkpoints import CheckpointUnavailableError
from modules.pointe.config import PointDiffusionConfig
from modules.pointe.image_pipeline import PointEImagePipeline
from modules.pointe.model import build_model
from modules.pointe.pipeline import PointEPipeline
from modules.pointe.sampler import GenerationStopped
from modules.pointe.tiny import build_tiny_image_pipeline, build_tiny_pipeline
from modules.pointe.weights import from_pretrained, load_official, save_pretrained


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> PointEPipeline:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny_pointe"))


def test_tiny_pipeline_makes_a_coloured_cloud(tiny: PointEPipeline) -> None:
    points, colors = tiny("a red motorcycle", seed=0)
    assert points.shape == (256, 3) and points.dtype == np.float32
    assert colors.shape == (256, 3) and colors.dtype == np.uint8
    assert np.isfinite(points).all()
    again, _ = tiny("a red motorcycle", seed=0)
    other, _ = tiny("a red motorcycle", seed=1)
    np.testing.assert_array_equal(points, again)
    assert not np.array_equal(points, other)


def test_progress_and_stop(tiny: PointEPipeline) -> None:
    calls: list[tuple[str, int, int]] = []
    tiny("a chair", seed=0, num_steps=3, on_step=lambda stage, i, n: calls.append((stage, i, n)))
    assert calls == [(stage, i, 3) for stage in ("base", "upsample") for i in (1, 2, 3)]

    calls.clear()
    with pytest.raises(GenerationStopped) as stopped:
        tiny("a chair", seed=0, num_steps=3, on_step=lambda *a: calls.append(a),
             should_stop=lambda: len(calls) == 4)
    assert (stopped.value.stage, stopped.value.step) == ("upsample", 1)  # 3 base steps + 1 upsample step


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": "x", "guidance_scale": -1.0}, "guidance_scale"),
        ({"prompt": "x", "num_steps": 0}, "num_steps"),
    ],
)
def test_check_inputs_names_the_argument(tiny: PointEPipeline, kwargs: dict, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        tiny(**kwargs)


def test_pipeline_round_trip(tiny: PointEPipeline, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path)
    loaded = PointEPipeline.from_pretrained(tmp_path)
    assert loaded.base_sampler == tiny.base_sampler and loaded.upsampler_sampler == tiny.upsampler_sampler
    for a, b in [(tiny.base, loaded.base), (tiny.upsampler, loaded.upsampler)]:
        assert a.config == b.config
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert ka == kb and torch.equal(va, vb)
    np.testing.assert_array_equal(tiny("a lamp", seed=3)[0], loaded("a lamp", seed=3)[0])


def test_model_folder_missing_file_is_an_error(tmp_path: Path) -> None:
    save_pretrained(build_model(PointDiffusionConfig.tiny_upsample()), tmp_path)
    assert from_pretrained(tmp_path).config == PointDiffusionConfig.tiny_upsample()
    (tmp_path / weights.WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(tmp_path)


def test_cache_dir_env_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ATELIER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert checkpoints.default_cache_dir() == tmp_path / "xdg" / "atelier" / "point-e"
    monkeypatch.setenv("ATELIER_CACHE", str(tmp_path / "atelier"))
    assert checkpoints.default_cache_dir() == tmp_path / "atelier" / "point-e"


def test_offline_without_cache_names_file_and_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATELIER_OFFLINE", "1")
    monkeypatch.setenv("ATELIER_CACHE", str(tmp_path))
    with pytest.raises(CheckpointUnavailableError) as error:
        load_official("upsample")
    message = str(error.value)
    assert "upsample_40m.pt" in message and str(tmp_path / "point-e") in message
    assert "https://openaipublic.azureedge.net/main/point-e/upsample_40m.pt" in message


def test_download_reports_progress_and_lands_atomically(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 3_000_000)
    progress: list[tuple[int, int | None]] = []
    target = tmp_path / "cache" / "file.bin"
    checkpoints.download(source.as_uri(), target, lambda done, total: progress.append((done, total)))
    assert target.read_bytes() == source.read_bytes()
    assert progress[-1] == (3_000_000, 3_000_000) and len(progress) >= 3
    assert not target.with_name("file.bin.part").exists()


def test_cached_official_checkpoint_loads_strictly(tmp_path: Path) -> None:
    reference = build_model(PointDiffusionConfig.base40m_textvec())
    torch.save(reference.state_dict(), tmp_path / "base_40m_textvec.pt")
    model = load_official("base40M-textvec", cache_dir=tmp_path)
    assert torch.equal(model.clip_embed.weight, reference.clip_embed.weight)


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> PointEImagePipeline:
    return build_tiny_image_pipeline(tmp_path_factory.mktemp("tiny_pointe_image"))


def picture(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_tiny_image_pipeline_makes_a_cloud_that_depends_on_the_image(tiny_image: PointEImagePipeline) -> None:
    points, colors = tiny_image(picture(0), seed=0)
    assert points.shape == (256, 3) and colors.shape == (256, 3) and colors.dtype == np.uint8
    np.testing.assert_array_equal(points, tiny_image(picture(0), seed=0)[0])
    assert not np.array_equal(points, tiny_image(picture(1), seed=0)[0])
    # A grey-scale or transparent upload is converted to RGB first.
    gray = tiny_image(picture(0).convert("LA"), seed=0)[0]
    np.testing.assert_array_equal(gray, tiny_image(picture(0).convert("LA").convert("RGB"), seed=0)[0])


def test_image_grid_is_the_towers_tokens_before_post_layernorm(tiny_image: PointEImagePipeline) -> None:
    grid, vector = tiny_image.encode_image(picture(2))
    assert grid.shape == (1, 8, 4)  # (B, hidden, (8/4)^2 patches)
    pixels = tiny_image.image_processor(images=picture(2), return_tensors="pt").pixel_values
    hidden = tiny_image.image_encoder(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(grid, hidden[:, 1:].transpose(1, 2))  # the last layer's output, class token dropped
    torch.testing.assert_close(vector.norm(dim=-1), torch.ones(1))


def test_image_pipeline_round_trip_and_bad_input(tiny_image: PointEImagePipeline, tmp_path: Path) -> None:
    tiny_image.save_pretrained(tmp_path)
    loaded = PointEImagePipeline.from_pretrained(tmp_path)
    np.testing.assert_array_equal(tiny_image(picture(3), seed=4)[0], loaded(picture(3), seed=4)[0])
    with pytest.raises(TypeError, match="image"):
        tiny_image("not an image")  # type: ignore[arg-type]


def test_mesh_from_a_tiny_cloud(tiny: PointEPipeline) -> None:
    points, colors = tiny("a cup", seed=0)
    steps: list[tuple[int, int]] = []
    vertices, faces, normals, vertex_colors = tiny.make_mesh(points, colors, grid_size=16, on_step=lambda *a: steps.append(a))
    assert len(faces) > 0 and vertices.shape == normals.shape and vertex_colors.shape == vertices.shape
    assert faces.max() < len(vertices)
    assert np.abs(vertices).max() <= 0.51 + 1e-6  # inside the official 1.02 cube
    assert vertex_colors.dtype == np.uint8 and {tuple(c) for c in vertex_colors} <= {tuple(c) for c in colors}
    assert steps[-1] == (1, 1)
    with pytest.raises(ValueError, match="grid_size"):
        tiny.make_mesh(points, colors, grid_size=2)


def test_imagevec_base_takes_the_image_vector(tiny_image: PointEImagePipeline) -> None:
    """base40M-imagevec's shape: the text-vector architecture fed CLIP's unit-norm image embedding."""
    imagevec = PointEImagePipeline(
        build_model(PointDiffusionConfig.tiny_text(cond_width=16)),  # type: ignore[arg-type]
        tiny_image.upsampler,
        tiny_image.image_encoder,
        tiny_image.image_processor,
        upsampler_sampler=tiny_image.upsampler_sampler,
    )
    cond, upsampler_cond = imagevec.encode_condition(picture(5))
    assert set(cond) == {"text_embed"} and set(upsampler_cond) == {"grid"}
    points, _ = imagevec(picture(5), seed=0, num_steps=2)
    assert points.shape == (256, 3) and np.isfinite(points).all()

"""Tiny random-weight Point-E pipelines (text and image) built from the real classes, for tests and `--tiny`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from .config import PointDiffusionConfig, SamplerConfig, SDFConfig
from .image_pipeline import PointEImagePipeline
from .model import UpsamplePointDiffusionTransformer, build_model
from .pipeline import PointEPipeline
from .sdf import PointCloudSDFModel

TINY_TEXT_WIDTH = 16
# The tiny CLIP image tower: 8x8 pixels in 4x4 patches -> a 2x2 grid of 8-dim tokens, as the tiny
# image-grid base and upsampler expect.
TINY_IMAGE_SIZE, TINY_PATCH, TINY_VISION_WIDTH = 8, 4, 8
TINY_GRID_TOKENS = (TINY_IMAGE_SIZE // TINY_PATCH) ** 2


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer that needs no downloaded files: the 256 byte symbols, the same with
    the end-of-word mark, and the two special tokens (ids 512, 513); no merges."""
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": 256 + i for i, s in enumerate(symbols)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def tiny_clip_text_config(projection_dim: int = TINY_TEXT_WIDTH) -> CLIPTextConfig:
    """A 2-layer CLIP text tower of width 8 over tiny_clip_tokenizer's ids (also the tiny Stable Diffusion's)."""
    return CLIPTextConfig(
        vocab_size=514,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
    )


def tiny_clip_text_encoder() -> CLIPTextModelWithProjection:
    return CLIPTextModelWithProjection(tiny_clip_text_config())


def tiny_clip_image_encoder() -> CLIPVisionModelWithProjection:
    config = CLIPVisionConfig(
        hidden_size=TINY_VISION_WIDTH,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TINY_IMAGE_SIZE,
        patch_size=TINY_PATCH,
        projection_dim=TINY_TEXT_WIDTH,
    )
    return CLIPVisionModelWithProjection(config)


def tiny_clip_image_processor() -> CLIPImageProcessor:
    size = TINY_IMAGE_SIZE
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def tiny_upsampler() -> UpsamplePointDiffusionTransformer:
    return UpsamplePointDiffusionTransformer(PointDiffusionConfig.tiny_upsample(TINY_VISION_WIDTH, TINY_GRID_TOKENS))


P = TypeVar("P", PointEPipeline, PointEImagePipeline)


def saved_and_loaded(
    pipeline_class: type[P], folder: str | Path, components: tuple[Any, ...], num_steps: int, upsampler_guidance: float
) -> P:
    """A tiny pipeline of `pipeline_class` (components in its order, then an SDF model) saved to folder and
    loaded back through from_pretrained, the path real weights take."""
    pipeline = pipeline_class(
        *components,
        base_sampler=SamplerConfig(steps=num_steps),
        upsampler_sampler=SamplerConfig(steps=num_steps, sigma_max=160.0, s_churn=0.0, guidance_scale=upsampler_guidance),
        sdf=PointCloudSDFModel(SDFConfig.tiny()),
    )
    pipeline.save_pretrained(folder)
    return pipeline_class.from_pretrained(folder)


def build_tiny_pipeline(folder: str | Path, num_steps: int = 2) -> PointEPipeline:
    """A random tiny text pipeline (64 + 192 points, width 32, and an SDF model), saved to folder and loaded
    back. Generation takes well under a second."""
    base = build_model(PointDiffusionConfig.tiny_text(cond_width=TINY_TEXT_WIDTH))
    components = (base, tiny_upsampler(), tiny_clip_text_encoder(), tiny_clip_tokenizer())
    return saved_and_loaded(PointEPipeline, folder, components, num_steps, upsampler_guidance=0.0)


def build_tiny_image_pipeline(folder: str | Path, num_steps: int = 2) -> PointEImagePipeline:
    """As build_tiny_pipeline, from an image: a tiny CLIP image tower, an image-grid base, the upsampler
    on the same grid and an SDF model."""
    base = build_model(PointDiffusionConfig.tiny_image_grid(TINY_VISION_WIDTH, TINY_GRID_TOKENS))
    components = (base, tiny_upsampler(), tiny_clip_image_encoder(), tiny_clip_image_processor())
    return saved_and_loaded(PointEImagePipeline, folder, components, num_steps, upsampler_guidance=3.0)

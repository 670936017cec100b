"""Point-E (openai/point-e) text-to-point-cloud in plain PyTorch: models, diffusion, sampler, weights."""

from .config import DiffusionConfig, PointDiffusionConfig, SamplerConfig
from .model import (
    PointDiffusionTransformer,
    TextPointDiffusionTransformer,
    UpsamplePointDiffusionTransformer,
    build_model,
)
from .pipeline import PointEPipeline
from .sampler import GenerationStopped, PointCloudSampler
from .tiny import build_tiny_pipeline
from .weights import CheckpointUnavailableError, from_pretrained, load_official, save_pretrained

__all__ = [
    "CheckpointUnavailableError",
    "DiffusionConfig",
    "GenerationStopped",
    "PointCloudSampler",
    "PointDiffusionConfig",
    "PointDiffusionTransformer",
    "PointEPipeline",
    "SamplerConfig",
    "TextPointDiffusionTransformer",
    "UpsamplePointDiffusionTransformer",
    "build_model",
    "build_tiny_pipeline",
    "from_pretrained",
    "load_official",
    "save_pretrained",
]

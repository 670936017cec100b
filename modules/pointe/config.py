"""Frozen configuration for the Point-E models, their diffusion schedules and samplers.

The numbers of the official configurations come from openai/point-e
(`point_e/models/configs.py`, `point_e/diffusion/configs.py`, `point_e/diffusion/sampler.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

# Point-E stores colours as [0, 255] and xyz as roughly [-0.5, 0.5]; the networks see both in [-1, 1]:
# model space = data * scale + bias (xyz * 2, rgb / 127.5 - 1).
POINTE_CHANNEL_SCALES = (2.0, 2.0, 2.0, 0.007843137255, 0.007843137255, 0.007843137255)
POINTE_CHANNEL_BIASES = (0.0, 0.0, 0.0, -1.0, -1.0, -1.0)

ModelType = Literal["text", "image_grid", "upsample"]


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Builds a frozen config from JSON data; unknown keys are errors, lists become tuples."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class PointDiffusionConfig:
    """Shape of one point-diffusion transformer.

    model_type "text": tokens are [CLIP vector, time, points]; the vector is a text embedding (official
        `base40M-textvec`) or an image embedding (`base40M-imagevec`): the two share one architecture.
    model_type "image_grid": tokens are [time, image grid, points] (official `base40M`, `base300M`, `base1B`).
    model_type "upsample": tokens are [time, image grid, low-res points, points] (official `upsample`).
    """

    model_type: ModelType
    width: int = 512
    layers: int = 12
    heads: int = 8
    input_channels: int = 6  # xyz + rgb
    output_channels: int = 12  # eps (6) + learned-range variance (6, unused by the Karras sampler)
    n_ctx: int = 1024  # points this model denoises
    time_token_cond: bool = True  # time as its own token; otherwise added to every point token
    cond_width: int = 768  # text: CLIP vector size; image_grid, upsample: CLIP image-grid feature size
    grid_tokens: int = 0  # image_grid, upsample: CLIP image-grid tokens (16 x 16); zeros = unconditional
    cond_ctx: int = 0  # upsample: low-res points it conditions on
    channel_scales: tuple[float, ...] = ()  # upsample: maps low-res data back to model space
    channel_biases: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.model_type not in ("text", "image_grid", "upsample"):
            raise ValueError(f"model_type must be 'text', 'image_grid' or 'upsample', got {self.model_type!r}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.model_type == "upsample" and self.cond_ctx <= 0:
            raise ValueError("an upsample model needs cond_ctx > 0")
        if self.model_type in ("image_grid", "upsample") and self.grid_tokens <= 0:
            raise ValueError(f"a {self.model_type} model needs grid_tokens > 0")
        if self.model_type == "upsample" and not (
            len(self.channel_scales) == len(self.channel_biases) == self.input_channels
        ):
            raise ValueError("channel_scales/channel_biases need one value per input channel")

    @classmethod
    def base40m_textvec(cls) -> PointDiffusionConfig:
        return cls(model_type="text")

    @classmethod
    def base40m_imagevec(cls) -> PointDiffusionConfig:
        return cls(model_type="text")

    @classmethod
    def base40m(cls) -> PointDiffusionConfig:
        return cls(model_type="image_grid", cond_width=1024, grid_tokens=256)

    @classmethod
    def base300m(cls) -> PointDiffusionConfig:
        return cls(model_type="image_grid", width=1024, layers=24, heads=16, cond_width=1024, grid_tokens=256)

    @classmethod
    def base1b(cls) -> PointDiffusionConfig:
        return cls(model_type="image_grid", width=2048, layers=24, heads=32, cond_width=1024, grid_tokens=256)

    @classmethod
    def upsample(cls) -> PointDiffusionConfig:
        return cls(
            model_type="upsample",
            n_ctx=3072,
            cond_width=1024,
            grid_tokens=256,
            cond_ctx=1024,
            channel_scales=POINTE_CHANNEL_SCALES,
            channel_biases=POINTE_CHANNEL_BIASES,
        )

    @classmethod
    def tiny_text(cls, cond_width: int = 16) -> PointDiffusionConfig:
        return cls(model_type="text", width=32, layers=2, heads=2, n_ctx=64, cond_width=cond_width)

    @classmethod
    def tiny_image_grid(cls, cond_width: int = 8, grid_tokens: int = 4) -> PointDiffusionConfig:
        return cls(
            model_type="image_grid", width=32, layers=2, heads=2, n_ctx=64, cond_width=cond_width, grid_tokens=grid_tokens
        )

    @classmethod
    def tiny_upsample(cls, cond_width: int = 8, grid_tokens: int = 4) -> PointDiffusionConfig:
        return cls(
            model_type="upsample",
            width=32,
            layers=2,
            heads=2,
            n_ctx=192,
            cond_width=cond_width,
            grid_tokens=grid_tokens,
            cond_ctx=64,
            channel_scales=POINTE_CHANNEL_SCALES,
            channel_biases=POINTE_CHANNEL_BIASES,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PointDiffusionConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class DiffusionConfig:
    """The Gaussian diffusion a model was trained with (eps prediction, 1024 steps)."""

    schedule: Literal["cosine", "linear"]
    timesteps: int = 1024
    channel_scales: tuple[float, ...] = POINTE_CHANNEL_SCALES  # data -> model space, undone on output
    channel_biases: tuple[float, ...] = POINTE_CHANNEL_BIASES

    @classmethod
    def base(cls) -> DiffusionConfig:
        return cls(schedule="cosine")

    @classmethod
    def upsample(cls) -> DiffusionConfig:
        return cls(schedule="linear")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        return _from_dict(cls, data)


@dataclass(frozen=True)
class SamplerConfig:
    """Karras-Heun sampling of one stage (Karras et al. 2022, Algorithm 2)."""

    steps: int = 64
    sigma_min: float = 1e-3
    sigma_max: float = 120.0
    rho: float = 7.0
    s_churn: float = 3.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    s_noise: float = 1.0
    guidance_scale: float = 3.0  # 0 or 1 means no classifier-free guidance
    clip_denoised: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")

    @classmethod
    def base(cls) -> SamplerConfig:
        return cls()

    @classmethod
    def upsample(cls) -> SamplerConfig:
        return cls(sigma_max=160.0, s_churn=0.0, guidance_scale=0.0)

    @classmethod
    def upsample_on_image(cls) -> SamplerConfig:
        """The official image2pointcloud example guides the upsampler too, on the image grid."""
        return cls(sigma_max=160.0, s_churn=0.0, guidance_scale=3.0)

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale not in (0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        # JSON has no infinity; None stands for "no upper bound".
        data = dataclasses.asdict(self)
        data["s_tmax"] = None if math.isinf(self.s_tmax) else self.s_tmax
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerConfig:
        data = dict(data)
        if data.get("s_tmax", 0.0) is None:
            data["s_tmax"] = math.inf
        return _from_dict(cls, data)


@dataclass(frozen=True)
class SDFConfig:
    """Shape of the point-cloud SDF model (official `sdf`: CrossAttentionPointCloudSDFModel).

    An encoder transformer turns the cloud's xyz into one latent per point; a decoder of cross-attention
    blocks lets each query point read those latents, and predicts its signed distance.
    """

    model_type: Literal["sdf"] = "sdf"  # tells a saved folder's config.json from a point-diffusion one
    width: int = 256
    encoder_layers: int = 8
    encoder_heads: int = 4
    decoder_layers: int = 4
    decoder_heads: int = 4
    n_ctx: int = 4096  # points it was trained on (the encoder takes any number)

    def __post_init__(self) -> None:
        for heads in (self.encoder_heads, self.decoder_heads):
            if self.width % heads:
                raise ValueError(f"width {self.width} is not divisible by heads {heads}")

    @classmethod
    def official(cls) -> SDFConfig:
        return cls()

    @classmethod
    def tiny(cls) -> SDFConfig:
        return cls(width=16, encoder_layers=2, encoder_heads=2, decoder_layers=2, decoder_heads=2, n_ctx=256)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SDFConfig:
        return _from_dict(cls, data)

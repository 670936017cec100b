"""PointEImagePipeline: an image -> a coloured point cloud of 4096 points (the Point-E paper's own path).

The image goes through CLIP ViT-L/14's image tower (transformers' CLIPVisionModelWithProjection, the
weights of openai/clip-vit-large-patch14). What the official ImageCLIP feeds the models, in those terms:
- the image grid (base40M, base300M, base1B and the upsampler): the vision transformer's output tokens
  without the class token, taken before `post_layernorm` and before the projection: transformers'
  `last_hidden_state[:, 1:]` (256 tokens of 1024 dims), transposed to (B, 1024, 256). OpenAI's CLIP
  computes the same tokens as `visual.transformer(ln_pre(conv1 patches + class + positions))`.
- the image vector (base40M-imagevec): `encode_image` = `ln_post(class token) @ proj`, which is
  transformers' `image_embeds`; L2-normalised as the official code does.
- preprocessing: OpenAI's resize of the short side to 224 (bicubic), centre crop to 224 and the CLIP
  mean/std, which CLIPImageProcessor reproduces (its centre crop may sit one pixel off where the
  resized side exceeds 224 by an odd number).
Checked once (not a test: it needs OpenAI's CLIP code): a random-weight OpenAI ViT-L/14, converted key by
key to transformers' layout (conv1 -> patch_embedding, ln_pre -> pre_layrnorm, in_proj split into
q/k/v, ln_post -> post_layernorm, proj.T -> visual_projection), gave the official `embed_images_grid`
exactly (largest difference 0.0) and `embed_images` within 1.2e-7 through encode_image below, on the
same pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from .checkpoints import OnProgress
from .config import DiffusionConfig, SamplerConfig
from .model import ImageGridPointDiffusionTransformer, TextPointDiffusionTransformer, UpsamplePointDiffusionTransformer
from .pipeline import OFFICIAL_CLIP, PointCloudPipeline, SamplingOptions
from .sdf import PointCloudSDFModel
from .weights import load_official


class PointEImagePipeline(PointCloudPipeline):
    """Point-E image-to-point-cloud: CLIP image grid (or vector) -> base model -> upsampler on the same
    grid, both stages guided at 3.0 as in the official image2pointcloud example.

    Components besides the shared ones (see PointCloudPipeline):
        base: ImageGridPointDiffusionTransformer (official: base40M, base300M, base1B), or
            TextPointDiffusionTransformer fed the image vector (official: base40M-imagevec).
        image_encoder: CLIPVisionModelWithProjection (ViT-L/14 for the official weights).
        image_processor: CLIPImageProcessor matching image_encoder.

    Folder layout adds image_encoder/ and image_processor/.
    """

    condition_components = {"image_encoder": CLIPVisionModelWithProjection, "image_processor": CLIPImageProcessor}

    def __init__(
        self,
        base: ImageGridPointDiffusionTransformer | TextPointDiffusionTransformer,
        upsampler: UpsamplePointDiffusionTransformer,
        image_encoder: CLIPVisionModelWithProjection,
        image_processor: CLIPImageProcessor,
        base_diffusion: DiffusionConfig = DiffusionConfig.base(),
        upsampler_diffusion: DiffusionConfig = DiffusionConfig.upsample(),
        base_sampler: SamplerConfig = SamplerConfig.base(),
        upsampler_sampler: SamplerConfig = SamplerConfig.upsample_on_image(),
        sdf: PointCloudSDFModel | None = None,
    ) -> None:
        vision = image_encoder.config
        grid_tokens = (vision.image_size // vision.patch_size) ** 2
        wanted = {"upsampler": (upsampler.config.cond_width, upsampler.config.grid_tokens)}
        if isinstance(base, ImageGridPointDiffusionTransformer):
            wanted["base"] = (base.config.cond_width, base.config.grid_tokens)
        elif base.config.cond_width != vision.projection_dim:
            raise ValueError(
                f"image_encoder projects to {vision.projection_dim} dims, the base model expects {base.config.cond_width}"
            )
        for name, (width, tokens) in wanted.items():
            if (width, tokens) != (vision.hidden_size, grid_tokens):
                raise ValueError(
                    f"image_encoder gives {grid_tokens} grid tokens of {vision.hidden_size} dims, "
                    f"the {name} expects {tokens} of {width}"
                )
        super().__init__(
            base, upsampler, base_diffusion, upsampler_diffusion, base_sampler, upsampler_sampler, sdf
        )
        self.image_encoder = image_encoder.eval()
        self.image_processor = image_processor

    @classmethod
    def from_official(
        cls,
        base_name: str = "base40M",
        clip_name_or_path: str = OFFICIAL_CLIP,
        cache_dir: str | Path | None = None,
        on_progress: OnProgress | None = None,
        device: torch.device | str = "cpu",
    ) -> PointEImagePipeline:
        """An official base checkpoint (base40M, base300M, base1B or base40M-imagevec), the upsampler and
        the SDF model (see weights.py for caching and offline use), and CLIP ViT-L/14's image tower in
        Hugging Face format (a hub id or a local folder)."""
        if base_name not in ("base40M", "base300M", "base1B", "base40M-imagevec"):
            raise ValueError(f"base_name must be an image-conditioned base checkpoint, got {base_name!r}")
        base = load_official(base_name, cache_dir, None, on_progress, device)
        upsampler = load_official("upsample", cache_dir, None, on_progress, device)
        sdf = load_official("sdf", cache_dir, None, on_progress, device)
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(clip_name_or_path, dtype=torch.float32)
        image_processor = CLIPImageProcessor.from_pretrained(clip_name_or_path)
        return cls(base, upsampler, image_encoder.to(device), image_processor, sdf=sdf)  # type: ignore[arg-type]

    def check_inputs(self, image: Image.Image, guidance_scale: float, num_steps: int | None) -> None:
        if not isinstance(image, Image.Image):
            raise TypeError(f"image must be a PIL image, got {type(image).__name__}")
        self.check_settings(guidance_scale, num_steps)

    @torch.no_grad()
    def encode_image(self, image: Image.Image) -> tuple[Tensor, Tensor]:
        """(grid (1, D, L) CLIP image tokens, vector (1, P) unit-norm CLIP image embedding)."""
        pixels = self.image_processor(images=image.convert("RGB"), return_tensors="pt").pixel_values
        out = self.image_encoder(pixel_values=pixels.to(self.image_encoder.device, self.image_encoder.dtype))
        grid = out.last_hidden_state[:, 1:].transpose(1, 2).float()  # (1, D, L): no post-LayerNorm, no projection
        vector = out.image_embeds.float()  # (1, P)
        return grid, vector / vector.norm(dim=-1, keepdim=True)

    def encode_condition(self, image: Image.Image) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        grid, vector = self.encode_image(image)
        base = {"grid": grid} if isinstance(self.base, ImageGridPointDiffusionTransformer) else {"text_embed": vector}
        return base, {"grid": grid}  # the upsampler also sees the grid

    def __call__(self, image: Image.Image, **options: Unpack[SamplingOptions]) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, 3) float32, colors (N, 3) uint8) of the object in a picture; options: SamplingOptions."""
        return self.generate(image, **options)

"""PointEPipeline: a text prompt -> a coloured point cloud of 4096 points, as numpy arrays."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from .config import DiffusionConfig, SamplerConfig
from .model import TextPointDiffusionTransformer, UpsamplePointDiffusionTransformer
from .sampler import OnStep, PointCloudSampler, ShouldStop
from .checkpoints import OnProgress
from .weights import from_pretrained, load_official, save_pretrained

PIPELINE_CONFIG_NAME = "pipeline.json"
# The text tower the official base40M-textvec was trained with (OpenAI CLIP ViT-L/14).
OFFICIAL_CLIP = "openai/clip-vit-large-patch14"


class PointEPipeline:
    """Point-E text-to-point-cloud: CLIP text vector -> base model (1024 points, guided) -> upsampler
    (3072 more points, unguided) -> xyz and RGB.

    Components:
        base: TextPointDiffusionTransformer (official weights: base40M-textvec).
        upsampler: UpsamplePointDiffusionTransformer (official weights: upsample).
        text_encoder: CLIPTextModelWithProjection; its `text_embeds` is the text vector.
        tokenizer: CLIPTokenizer matching text_encoder.
        base_diffusion, upsampler_diffusion: the schedules the models were trained with.
        base_sampler, upsampler_sampler: default sampling settings of each stage.

    Folder layout of save_pretrained/from_pretrained: pipeline.json, base/, upsampler/,
    text_encoder/, tokenizer/.
    """

    def __init__(
        self,
        base: TextPointDiffusionTransformer,
        upsampler: UpsamplePointDiffusionTransformer,
        text_encoder: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        base_diffusion: DiffusionConfig = DiffusionConfig.base(),
        upsampler_diffusion: DiffusionConfig = DiffusionConfig.upsample(),
        base_sampler: SamplerConfig = SamplerConfig.base(),
        upsampler_sampler: SamplerConfig = SamplerConfig.upsample(),
    ) -> None:
        if text_encoder.config.projection_dim != base.config.cond_width:
            raise ValueError(
                f"text_encoder projects to {text_encoder.config.projection_dim} dims, "
                f"the base model expects {base.config.cond_width}"
            )
        if upsampler.config.cond_ctx != base.config.n_ctx:
            raise ValueError(
                f"upsampler conditions on {upsampler.config.cond_ctx} points, base makes {base.config.n_ctx}"
            )
        self.base = base.eval()
        self.upsampler = upsampler.eval()
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer
        self.base_diffusion = base_diffusion
        self.upsampler_diffusion = upsampler_diffusion
        self.base_sampler = base_sampler
        self.upsampler_sampler = upsampler_sampler

    # ---- in and out

    @classmethod
    def from_official(
        cls,
        clip_name_or_path: str = OFFICIAL_CLIP,
        cache_dir: str | Path | None = None,
        base_file: str | Path | None = None,
        upsampler_file: str | Path | None = None,
        on_progress: OnProgress | None = None,
        device: torch.device | str = "cpu",
    ) -> PointEPipeline:
        """The official checkpoints (see weights.py for caching and offline use) and a CLIP
        ViT-L/14 text tower in Hugging Face format (a hub id or a local folder)."""
        base = load_official("base40M-textvec", cache_dir, base_file, on_progress, device)
        upsampler = load_official("upsample", cache_dir, upsampler_file, on_progress, device)
        text_encoder = CLIPTextModelWithProjection.from_pretrained(clip_name_or_path, dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(clip_name_or_path)
        return cls(base, upsampler, text_encoder.to(device), tokenizer)  # type: ignore[arg-type]

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        configs = {
            "base_diffusion": self.base_diffusion.to_dict(),
            "upsampler_diffusion": self.upsampler_diffusion.to_dict(),
            "base_sampler": self.base_sampler.to_dict(),
            "upsampler_sampler": self.upsampler_sampler.to_dict(),
        }
        (folder / PIPELINE_CONFIG_NAME).write_text(json.dumps(configs, indent=2) + "\n")
        save_pretrained(self.base, folder / "base")
        save_pretrained(self.upsampler, folder / "upsampler")
        self.text_encoder.save_pretrained(folder / "text_encoder")
        self.tokenizer.save_pretrained(folder / "tokenizer")

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> PointEPipeline:
        folder = Path(folder)
        if not (folder / PIPELINE_CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{folder} is not a Point-E pipeline folder: {PIPELINE_CONFIG_NAME} is missing"
            )
        configs = json.loads((folder / PIPELINE_CONFIG_NAME).read_text())
        text_encoder = CLIPTextModelWithProjection.from_pretrained(
            folder / "text_encoder", dtype=torch.float32
        )
        return cls(
            from_pretrained(folder / "base", device),  # type: ignore[arg-type]
            from_pretrained(folder / "upsampler", device),  # type: ignore[arg-type]
            text_encoder.to(device),
            CLIPTokenizer.from_pretrained(folder / "tokenizer"),
            DiffusionConfig.from_dict(configs["base_diffusion"]),
            DiffusionConfig.from_dict(configs["upsampler_diffusion"]),
            SamplerConfig.from_dict(configs["base_sampler"]),
            SamplerConfig.from_dict(configs["upsampler_sampler"]),
        )

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def to(self, device: torch.device | str) -> PointEPipeline:
        for module in (self.base, self.upsampler, self.text_encoder):
            module.to(device)
        return self

    # ---- generation

    def check_inputs(self, prompt: str, guidance_scale: float, num_steps: int | None) -> None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        if num_steps is not None and not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> Tensor:
        """(1, D) unit-norm CLIP text vector (the model rescales it)."""
        ids = self.tokenizer(
            prompt, truncation=True, max_length=self.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        # No padding and no attention mask: CLIP's text tower is causal and pools at the end token.
        text = self.text_encoder(input_ids=ids.to(self.text_encoder.device)).text_embeds.float()  # (1, D)
        return text / text.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        seed: int | None = None,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        on_step: OnStep | None = None,
        should_stop: ShouldStop | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns (points (N, 3) float32, colors (N, 3) uint8), N = base + upsampler points (4096).

        seed: seeds a CPU generator (ignored when `generator` is given; random when both are None).
        guidance_scale: classifier-free guidance of the base stage (default 3.0).
        num_steps: Heun steps of both stages (default: each stage's own, 64; a step is two model calls,
            the last step one).
        on_step(stage, i, total): after every step; stage is "base" or "upsample".
        should_stop(): checked before every step; True raises sampler.GenerationStopped.
        """
        guidance_scale = self.base_sampler.guidance_scale if guidance_scale is None else guidance_scale
        # 1. Check inputs
        self.check_inputs(prompt, guidance_scale, num_steps)
        # 2. Encode the prompt
        text_embed = self.encode_prompt(prompt)
        # 3. Sample both stages
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()  # a fresh random seed
            else:
                generator.manual_seed(seed)
        base_sampler = dataclasses.replace(self.base_sampler, guidance_scale=guidance_scale)
        upsampler_sampler = self.upsampler_sampler
        if num_steps is not None:
            base_sampler = dataclasses.replace(base_sampler, steps=num_steps)
            upsampler_sampler = dataclasses.replace(upsampler_sampler, steps=num_steps)
        sampler = PointCloudSampler(
            self.base,
            self.upsampler,
            self.base_diffusion,
            self.upsampler_diffusion,
            base_sampler,
            upsampler_sampler,
        )
        samples = sampler.sample({"text_embed": text_embed}, generator, on_step=on_step, should_stop=should_stop)
        # 4. Postprocess: (1, 6, N) -> xyz and 8-bit RGB
        points = samples[0, :3].T.float().cpu().numpy()
        colors = samples[0, 3:].T.clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        return points, colors

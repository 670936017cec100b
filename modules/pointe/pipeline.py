"""Point-E pipelines: a condition -> a coloured point cloud of 4096 points, and optionally a mesh.

PointCloudPipeline holds what both conditionings share (the two diffusion stages, their settings, the
optional SDF model, seeding, sampling, saving); PointEPipeline adds the CLIP text tower, and
image_pipeline.PointEImagePipeline the CLIP image tower.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, ClassVar, TypedDict, Unpack

import numpy as np
import torch
from torch import Tensor
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, PreTrainedModel

from .checkpoints import OnProgress
from .config import DiffusionConfig, SamplerConfig
from .mesh import GRID_SIZE, OnStep as OnMeshStep, ShouldStop as ShouldStopMeshing, point_cloud_mesh
from .model import PointDiffusionTransformer, TextPointDiffusionTransformer, UpsamplePointDiffusionTransformer
from .sampler import OnStep, PointCloudSampler, ShouldStop
from .sdf import PointCloudSDFModel
from .weights import from_pretrained, load_official, save_pretrained

PIPELINE_CONFIG_NAME = "pipeline.json"
# The CLIP model the official checkpoints were trained with (OpenAI CLIP ViT-L/14): its text tower
# for base40M-textvec, its image tower for the image models.
OFFICIAL_CLIP = "openai/clip-vit-large-patch14"

Mesh = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # vertices, faces, normals, colours (uint8)


class SamplingOptions(TypedDict, total=False):
    """What a pipeline call takes besides its condition (all optional).

    seed: seeds a CPU generator (ignored when `generator` is given; random when both are None).
    guidance_scale: classifier-free guidance of the base stage (default 3.0); the upsampler keeps its
        own (upsampler_sampler: 0.0 after a text base, 3.0 on an image as the official example).
    num_steps: Heun steps of both stages (default: each stage's own, 64; a step is two model calls, the
        last step one).
    on_step(stage, i, total): after every step; stage is "base" or "upsample".
    should_stop(): checked before every step; True raises sampler.GenerationStopped.
    """

    seed: int | None
    guidance_scale: float | None
    num_steps: int | None
    on_step: OnStep | None
    should_stop: ShouldStop | None
    generator: torch.Generator | None


class PointCloudPipeline:
    """The base model (1024 points, guided) -> the upsampler (3072 more) -> xyz and RGB; then, with an
    SDF model, a coloured mesh. Subclasses add the encoder of their condition.

    Components shared by every conditioning:
        base: the first stage; upsampler: UpsamplePointDiffusionTransformer (official weights: upsample).
        base_diffusion, upsampler_diffusion: the schedules the models were trained with.
        base_sampler, upsampler_sampler: default sampling settings of each stage.
        sdf: PointCloudSDFModel for meshes (official weights: sdf), or None.

    Folder layout of save_pretrained/from_pretrained: pipeline.json, base/, upsampler/, sdf/ (optional)
    and one folder per condition component.
    """

    #: The condition's components (transformers classes), each saved in the folder of its name.
    condition_components: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        base: PointDiffusionTransformer,
        upsampler: UpsamplePointDiffusionTransformer,
        base_diffusion: DiffusionConfig,
        upsampler_diffusion: DiffusionConfig,
        base_sampler: SamplerConfig,
        upsampler_sampler: SamplerConfig,
        sdf: PointCloudSDFModel | None = None,
    ) -> None:
        if upsampler.config.cond_ctx != base.config.n_ctx:
            raise ValueError(
                f"upsampler conditions on {upsampler.config.cond_ctx} points, base makes {base.config.n_ctx}"
            )
        self.base = base.eval()
        self.upsampler = upsampler.eval()
        self.sdf = sdf.eval() if sdf is not None else None
        self.base_diffusion = base_diffusion
        self.upsampler_diffusion = upsampler_diffusion
        self.base_sampler = base_sampler
        self.upsampler_sampler = upsampler_sampler

    # ---- in and out

    def encoders(self) -> list[torch.nn.Module]:
        return [c for c in (getattr(self, name) for name in self.condition_components) if isinstance(c, torch.nn.Module)]

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
        if self.sdf is not None:
            save_pretrained(self.sdf, folder / "sdf")
        for name in self.condition_components:
            getattr(self, name).save_pretrained(folder / name)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> Any:
        folder = Path(folder)
        if not (folder / PIPELINE_CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"{folder} is not a Point-E pipeline folder: {PIPELINE_CONFIG_NAME} is missing"
            )
        configs = json.loads((folder / PIPELINE_CONFIG_NAME).read_text())
        components = {}
        for name, component_class in cls.condition_components.items():
            if issubclass(component_class, PreTrainedModel):
                components[name] = component_class.from_pretrained(folder / name, dtype=torch.float32).to(device)
            else:
                components[name] = component_class.from_pretrained(folder / name)
        return cls(
            **components,
            base=from_pretrained(folder / "base", device),
            upsampler=from_pretrained(folder / "upsampler", device),
            sdf=from_pretrained(folder / "sdf", device) if (folder / "sdf").is_dir() else None,
            base_diffusion=DiffusionConfig.from_dict(configs["base_diffusion"]),
            upsampler_diffusion=DiffusionConfig.from_dict(configs["upsampler_diffusion"]),
            base_sampler=SamplerConfig.from_dict(configs["base_sampler"]),
            upsampler_sampler=SamplerConfig.from_dict(configs["upsampler_sampler"]),
        )

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def components(self) -> list[torch.nn.Module]:
        stages = [self.base, self.upsampler] + ([self.sdf] if self.sdf is not None else [])
        return stages + self.encoders()

    def to(self, device: torch.device | str) -> PointCloudPipeline:
        for module in self.components():
            module.to(device)
        return self

    # ---- generation

    @staticmethod
    def check_settings(guidance_scale: float, num_steps: int | None) -> None:
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
        if num_steps is not None and not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")

    def check_inputs(self, condition: Any, guidance_scale: float, num_steps: int | None) -> None:
        raise NotImplementedError

    def encode_condition(self, condition: Any) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The inputs of (base, upsampler besides the low-res points) for one condition."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        condition: Any,
        seed: int | None = None,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        on_step: OnStep | None = None,
        should_stop: ShouldStop | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """What every subclass's `__call__` does with its condition (see SamplingOptions for the rest):
        (points (N, 3) float32, colors (N, 3) uint8), N = base + upsampler points (4096)."""
        guidance_scale = self.base_sampler.guidance_scale if guidance_scale is None else guidance_scale
        # 1. Check inputs
        self.check_inputs(condition, guidance_scale, num_steps)
        # 2. Encode the condition
        cond, upsampler_cond = self.encode_condition(condition)
        # 3. Both stages' settings and one CPU generator for both
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
        # 4. Sample both stages, then xyz and 8-bit RGB
        samples = sampler.sample(
            cond, generator, on_step=on_step, should_stop=should_stop, upsampler_cond=upsampler_cond
        )  # (1, 6, N)
        points = samples[0, :3].T.float().cpu().numpy()
        colors = samples[0, 3:].T.clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        return points, colors

    def make_mesh(
        self,
        points: np.ndarray,
        colors: np.ndarray,
        grid_size: int = GRID_SIZE,
        on_step: OnMeshStep | None = None,
        should_stop: ShouldStopMeshing | None = None,
    ) -> Mesh:
        """A point cloud -> (vertices, faces, normals, vertex colours) by the SDF model and marching cubes
        over grid_size^3 samples (official: 128)."""
        if self.sdf is None:
            raise ValueError("this pipeline has no SDF model: save one under sdf/ to make meshes")
        if not (isinstance(grid_size, int) and grid_size >= 8):
            raise ValueError(f"grid_size must be an int >= 8, got {grid_size!r}")
        return point_cloud_mesh(self.sdf, points, colors, grid_size, on_step=on_step, should_stop=should_stop)


class PointEPipeline(PointCloudPipeline):
    """Point-E text-to-point-cloud: CLIP text vector -> base model (guided) -> upsampler (unguided).

    Components besides the shared ones (see PointCloudPipeline):
        base: TextPointDiffusionTransformer (official weights: base40M-textvec).
        text_encoder: CLIPTextModelWithProjection; its `text_embeds` is the text vector.
        tokenizer: CLIPTokenizer matching text_encoder.

    Folder layout adds text_encoder/ and tokenizer/.
    """

    condition_components = {"text_encoder": CLIPTextModelWithProjection, "tokenizer": CLIPTokenizer}

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
        sdf: PointCloudSDFModel | None = None,
    ) -> None:
        if text_encoder.config.projection_dim != base.config.cond_width:
            raise ValueError(
                f"text_encoder projects to {text_encoder.config.projection_dim} dims, "
                f"the base model expects {base.config.cond_width}"
            )
        super().__init__(
            base, upsampler, base_diffusion, upsampler_diffusion, base_sampler, upsampler_sampler, sdf
        )
        self.text_encoder = text_encoder.eval()
        self.tokenizer = tokenizer

    @classmethod
    def from_official(
        cls,
        clip_name_or_path: str = OFFICIAL_CLIP,
        cache_dir: str | Path | None = None,
        base_file: str | Path | None = None,
        upsampler_file: str | Path | None = None,
        on_progress: OnProgress | None = None,
        device: torch.device | str = "cpu",
        sdf_file: str | Path | None = None,
    ) -> PointEPipeline:
        """The official checkpoints (see weights.py for caching and offline use) and a CLIP
        ViT-L/14 text tower in Hugging Face format (a hub id or a local folder)."""
        base = load_official("base40M-textvec", cache_dir, base_file, on_progress, device)
        upsampler = load_official("upsample", cache_dir, upsampler_file, on_progress, device)
        sdf = load_official("sdf", cache_dir, sdf_file, on_progress, device)
        text_encoder = CLIPTextModelWithProjection.from_pretrained(clip_name_or_path, dtype=torch.float32)
        tokenizer = CLIPTokenizer.from_pretrained(clip_name_or_path)
        return cls(base, upsampler, text_encoder.to(device), tokenizer, sdf=sdf)  # type: ignore[arg-type]

    def check_inputs(self, prompt: str, guidance_scale: float, num_steps: int | None) -> None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        self.check_settings(guidance_scale, num_steps)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> Tensor:
        """(1, D) unit-norm CLIP text vector (the model rescales it)."""
        ids = self.tokenizer(
            prompt, truncation=True, max_length=self.tokenizer.model_max_length, return_tensors="pt"
        ).input_ids
        # No padding and no attention mask: CLIP's text tower is causal and pools at the end token.
        text = self.text_encoder(input_ids=ids.to(self.text_encoder.device)).text_embeds.float()  # (1, D)
        return text / text.norm(dim=-1, keepdim=True)

    def encode_condition(self, prompt: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {"text_embed": self.encode_prompt(prompt)}, {}  # the upsampler sees only the points

    def __call__(self, prompt: str, **options: Unpack[SamplingOptions]) -> tuple[np.ndarray, np.ndarray]:
        """(points (N, 3) float32, colors (N, 3) uint8) of the object a prompt names; options: SamplingOptions."""
        return self.generate(prompt, **options)

"""Karras-Heun sampling of the Point-E models and the base -> upsampler chain.

Each stage integrates the probability-flow ODE of Karras et al. (2022) with Heun steps over the sigmas
(sigma_max^(1/rho) .. sigma_min^(1/rho))^rho, optionally "churning" (re-adding a little noise) before
each step. The Gaussian-diffusion models are used as denoisers: sigma -> integer timestep, input scaled
by 1/sqrt(sigma^2 + 1), eps -> x0, x0 clamped to [-1, 1]. Classifier-free guidance mixes the clamped x0
of the conditional and unconditional halves of one doubled batch.

Stopping: `should_stop()` is checked before every step; when it returns True the sampler raises
`GenerationStopped` (nothing partial is returned).

References:
1) Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", 2022,
   https://arxiv.org/abs/2206.00364 (Algorithm 2)
2) openai/point-e, point_e/diffusion/k_diffusion.py and sampler.py, which this reproduces step for step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .config import DiffusionConfig, SamplerConfig
from .diffusion import GaussianDiffusion
from .model import PointDiffusionTransformer, UpsamplePointDiffusionTransformer

OnStep = Callable[[str, int, int], None]  # (stage, steps done, total steps of the stage)
ShouldStop = Callable[[], bool]
Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x (B, C, N), sigma (B,)) -> x0 (B, C, N)


class GenerationStopped(Exception):
    """Raised when should_stop() returned True; the sample is abandoned."""

    def __init__(self, stage: str, step: int, total: int) -> None:
        super().__init__(f"generation stopped at {stage} step {step}/{total}")
        self.stage, self.step, self.total = stage, step, total


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """(steps + 1,) float32 noise levels from sigma_max down to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, steps)
    max_inv_rho, min_inv_rho = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def heun_sample(
    denoise: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    config: SamplerConfig,
    generator: torch.Generator | None = None,
    stage: str = "sample",
    on_step: OnStep | None = None,
    should_stop: ShouldStop | None = None,
) -> Tensor:
    """Integrates from x (B, C, N) at sigmas[0] and returns the final x0 prediction (B, C, N).

    With s_churn=0 no random numbers are drawn, so the result depends only on x.
    """
    total = len(sigmas) - 1
    s_in = x.new_ones(x.shape[0])  # (B,)
    for i in range(total):
        if should_stop is not None and should_stop():
            raise GenerationStopped(stage, i, total)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        in_churn_range = config.s_tmin <= sigma <= config.s_tmax
        gamma = min(config.s_churn / total, 2**0.5 - 1) if in_churn_range else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            eps = torch.randn(x.shape, generator=generator, device=_device_of(generator)).to(x)
            x = x + eps * config.s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = denoise(x, sigma_hat * s_in)
        # The last step goes to sigma = 0: its Euler update would land on `denoised`, which is returned.
        if sigma_next > 0:
            d = (x - denoised) / sigma_hat
            dt = sigma_next - sigma_hat
            x_2 = x + d * dt
            d_2 = (x_2 - denoise(x_2, sigma_next * s_in)) / sigma_next
            x = x + (d + d_2) / 2 * dt
        if on_step is not None:
            on_step(stage, i + 1, total)
    return denoised


def _device_of(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def gaussian_denoiser(
    model_fn: Callable[[Tensor, Tensor], Tensor], diffusion: GaussianDiffusion, config: SamplerConfig
) -> Denoiser:
    """Wraps an eps-predicting model_fn(x_t, t) as a Karras denoiser, with classifier-free guidance
    when config.uses_guidance (model_fn must then take a doubled batch: conditional rows first)."""

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        if config.uses_guidance:
            x, sigma = torch.cat([x, x]), torch.cat([sigma, sigma])  # (2B, C, N), (2B,)
        t = diffusion.sigma_to_t(sigma)  # (B,)
        c_in = 1.0 / (sigma**2 + 1) ** 0.5  # (B,): back to the variance-preserving x_t of this sigma
        x_t = x * c_in[:, None, None]
        eps = model_fn(x_t, t)[:, : x.shape[1]]  # (B, C, N); the variance channels are unused
        x0 = diffusion.predict_x0(x_t, t, eps)
        if config.clip_denoised:
            x0 = x0.clamp(-1, 1)
        if config.uses_guidance:
            cond, uncond = x0.chunk(2)
            x0 = uncond + config.guidance_scale * (cond - uncond)
        return x0

    return denoise


def sample_stage(
    model: PointDiffusionTransformer,
    cond: dict[str, Tensor],
    diffusion: GaussianDiffusion,
    config: SamplerConfig,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    stage: str = "sample",
    on_step: OnStep | None = None,
    should_stop: ShouldStop | None = None,
) -> Tensor:
    """One stage -> a sample (B, C, N) in data space.

    cond: the model's keyword inputs, (B, ...) each; the unconditional half of a guided batch gets zeros.
    noise: the standard-normal start (B, C, N); drawn from generator when None.
    """
    device = next(model.parameters()).device
    if noise is None:
        # Drawn when the stage starts, after the previous stage's churn noise, as the official sampler does.
        shape = (next(iter(cond.values())).shape[0], model.config.input_channels, model.config.n_ctx)
        noise = torch.randn(shape, generator=generator, device=_device_of(generator))
    cond = {k: v.to(device) for k, v in cond.items()}
    if config.uses_guidance:
        cond = {k: torch.cat([v, torch.zeros_like(v)]) for k, v in cond.items()}
    denoise = gaussian_denoiser(lambda x_t, t: model(x_t, t, **cond), diffusion, config)
    sigmas = karras_sigmas(config.steps, config.sigma_min, config.sigma_max, config.rho).to(device)
    x_T = noise.to(device) * config.sigma_max
    x0 = heun_sample(denoise, x_T, sigmas, config, generator, stage, on_step, should_stop)
    return diffusion.unscale_channels(x0)


@dataclass
class PointCloudSampler:
    """Condition -> coloured point cloud: the base model samples its n_ctx points (1024), then the
    upsampler adds its own n_ctx (3072) conditioned on them. Output channels: xyz, then rgb 0..255.

    The base is a text-vector or image-vector model (TextPointDiffusionTransformer) or an image-grid model;
    from text the upsampler runs unguided on the points alone, from an image the official example guides
    it too, on the same image grid.
    """

    base: PointDiffusionTransformer
    upsampler: UpsamplePointDiffusionTransformer
    base_diffusion: DiffusionConfig
    upsampler_diffusion: DiffusionConfig
    base_sampler: SamplerConfig
    upsampler_sampler: SamplerConfig

    @torch.no_grad()
    def sample(
        self,
        cond: dict[str, Tensor],
        generator: torch.Generator | None = None,
        noise: tuple[Tensor, Tensor] | None = None,
        on_step: OnStep | None = None,
        should_stop: ShouldStop | None = None,
        upsampler_cond: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """cond: the base model's inputs, (B, ...) each: {"text_embed": (B, D)} unit-norm CLIP vectors,
        or {"grid": (B, D, L)} CLIP image grids. upsampler_cond: the upsampler's inputs besides the
        low-res points (from an image: {"grid": ...}; from text: none).

        noise: standard-normal starts of (base, upsampler), (B, C, N_base) and (B, C, N_up); drawn
        from `generator` when None. Returns (B, C, N_base + N_up) in data space.
        """
        base_noise, upsampler_noise = (None, None) if noise is None else noise
        low_res = sample_stage(
            self.base,
            cond,
            GaussianDiffusion(self.base_diffusion),
            self.base_sampler,
            base_noise,
            generator,
            "base",
            on_step,
            should_stop,
        )  # (B, C, N_base)
        high_res = sample_stage(
            self.upsampler,
            {"low_res": low_res, **(upsampler_cond or {})},
            GaussianDiffusion(self.upsampler_diffusion),
            self.upsampler_sampler,
            upsampler_noise,
            generator,
            "upsample",
            on_step,
            should_stop,
        )  # (B, C, N_up)
        return torch.cat([low_res, high_res], dim=-1)

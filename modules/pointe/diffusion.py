"""The Gaussian (DDPM) diffusion the Point-E models were trained with, reduced to what sampling needs.

Both models predict eps over 1024 training steps: the base with the cosine schedule of Nichol & Dhariwal
(2021), the upsampler with DDPM's linear betas stretched to 1024 steps. The Karras sampler works in
sigma = sqrt(1 / alpha_bar - 1) and maps each sigma back to an integer training timestep.

References:
1) Ho et al., "Denoising Diffusion Probabilistic Models", 2020, https://arxiv.org/abs/2006.11239
2) Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models", 2021,
   https://arxiv.org/abs/2102.09672
3) openai/point-e, point_e/diffusion/gaussian_diffusion.py and k_diffusion.py (GaussianToKarrasDenoiser).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .config import DiffusionConfig


def beta_schedule(name: str, timesteps: int) -> Tensor:
    """Betas in float64, (timesteps,)."""
    if name == "linear":
        scale = 1000 / timesteps  # keeps the schedule's shape when the step count changes
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    if name == "cosine":

        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [
            min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), 0.999)
            for i in range(timesteps)
        ]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unknown beta schedule {name!r}; expected 'linear' or 'cosine'")


class GaussianDiffusion:
    """alpha_bar of every training step, sigma -> timestep, and eps -> x0."""

    def __init__(self, config: DiffusionConfig) -> None:
        self.config = config
        self.num_timesteps = config.timesteps
        self.alphas_cumprod = torch.cumprod(1.0 - beta_schedule(config.schedule, config.timesteps), 0)
        self.sqrt_recip_alphas_cumprod = torch.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / self.alphas_cumprod - 1.0)
        self._scales = torch.tensor(config.channel_scales, dtype=torch.float32)[None, :, None]  # (1, C, 1)
        self._biases = torch.tensor(config.channel_biases, dtype=torch.float32)[None, :, None]

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """(B,) Karras sigmas -> (B,) integer timesteps: the alpha_bar curve, linearly interpolated,
        then truncated to an integer as the checkpoints saw only integer steps."""
        T = self.num_timesteps
        alpha = 1.0 / (sigma.detach().to("cpu", torch.float64) ** 2 + 1.0)  # (B,)
        ascending = self.alphas_cumprod.flip(0)  # alpha_bar of t = T-1 .. 0
        hi = torch.searchsorted(ascending, alpha).clamp(1, T - 1)  # ascending[hi-1] < alpha <= ascending[hi]
        lo_alpha, hi_alpha = ascending[hi - 1], ascending[hi]
        slope = -1.0 / (hi_alpha - lo_alpha)  # one timestep per alpha_bar interval, decreasing
        t = slope * (alpha - lo_alpha) + (T - hi)  # ascending[hi-1] is alpha_bar at t = T - hi
        # Out-of-range sigmas land on the first or last step.
        return t.clamp(0, T - 1).long().to(sigma.device)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = x_t / sqrt(alpha_bar) - eps * sqrt(1 / alpha_bar - 1), coefficients per batch row."""
        a = self.sqrt_recip_alphas_cumprod[t.cpu()].to(x_t)[:, None, None]  # (B, 1, 1)
        b = self.sqrt_recipm1_alphas_cumprod[t.cpu()].to(x_t)[:, None, None]
        return a * x_t - b * eps

    def unscale_channels(self, x: Tensor) -> Tensor:
        """Model space [-1, 1] -> data space (xyz, rgb 0..255): (B, C, N)."""
        return (x - self._biases.to(x)) / self._scales.to(x)

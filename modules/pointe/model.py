"""Point-E point-diffusion transformers, written to load the official checkpoints with a strict key copy.

A point cloud of N points with C channels (xyz + rgb) is a sequence of N tokens; there is no positional
embedding, so the model is permutation-equivariant over points. Condition tokens (text vector, time,
low-res points, image grid) are placed before the point tokens and dropped again at the output.

References:
1) Nichol et al., "Point-E: A System for Generating 3D Point Clouds from Complex Prompts", 2022,
   https://arxiv.org/abs/2212.08751
2) The official implementation, https://github.com/openai/point-e (point_e/models/transformer.py):
   parameter names, token order and the per-head q|k|v layout follow it so its .pt files load as-is.
3) nanoGPT (https://github.com/karpathy/nanoGPT) for the layout of this file.

Shapes: B batch, N points, C channels, W width, H heads, L condition tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import PointDiffusionConfig


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal [cos | sin] embedding of (possibly fractional) timesteps: (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (dim/2,)
    args = t[:, None].to(freqs.dtype) * freqs[None]  # (B, dim/2)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)


class MultiheadAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, T, W = x.shape
        # The checkpoint lays c_qkv out per head as [q|k|v], not as [Q|K|V] blocks over all heads.
        qkv = self.c_qkv(x).view(B, T, self.heads, 3 * W // self.heads)  # (B, T, H, 3*hs)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)  # each (B, H, T, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, hs), no mask: points are a set
        return self.c_proj(y.transpose(1, 2).reshape(B, T, W))  # (B, T, W)


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = nn.GELU()  # exact erf GELU, as trained
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class PointDiffusionTransformer(nn.Module):
    """The trunk shared by both models: time MLP, input/output projections and the transformer.

    Weights start from PyTorch's default init; real weights come from a checkpoint.
    """

    def __init__(self, config: PointDiffusionConfig) -> None:
        super().__init__()
        self.config = config
        W = config.width
        self.time_embed = MLP(W)
        self.ln_pre = nn.LayerNorm(W)
        self.backbone = Transformer(W, config.layers, config.heads)
        self.ln_post = nn.LayerNorm(W)
        self.input_proj = nn.Linear(config.input_channels, W)
        self.output_proj = nn.Linear(W, config.output_channels)

    def _embed_time(self, t: Tensor) -> Tensor:
        return self.time_embed(timestep_embedding(t, self.config.width))  # (B, W)

    def _time_tokens(self, t_emb: Tensor) -> list[Tensor]:
        return [t_emb[:, None]] if self.config.time_token_cond else []  # [(B, 1, W)] or []

    def _denoise(self, x: Tensor, t_emb: Tensor, prefix: list[Tensor]) -> Tensor:
        """x: (B, C, N) noisy points; prefix: condition tokens, each (B, L_i, W), in checkpoint order."""
        if x.shape[-1] != self.config.n_ctx:
            raise ValueError(f"expected {self.config.n_ctx} points, got {x.shape[-1]}")
        h = self.input_proj(x.transpose(1, 2))  # (B, N, W)
        if not self.config.time_token_cond:
            h = h + t_emb[:, None]
        h = torch.cat([*prefix, h], dim=1)  # (B, L + N, W)
        h = self.ln_post(self.backbone(self.ln_pre(h)))
        h = h[:, -x.shape[-1] :]  # (B, N, W), condition tokens dropped
        return self.output_proj(h).transpose(1, 2)  # (B, C_out, N)


class TextPointDiffusionTransformer(PointDiffusionTransformer):
    """base40M-textvec / base40M-imagevec: conditions on one CLIP vector (text or image embedding).
    Tokens: [vector, time, points]."""

    def __init__(self, config: PointDiffusionConfig) -> None:
        super().__init__(config)
        self.clip_embed = nn.Linear(config.cond_width, config.width)

    def forward(self, x: Tensor, t: Tensor, text_embed: Tensor) -> Tensor:
        """x: (B, C, N); t: (B,) timesteps; text_embed: (B, D) unit-norm CLIP vector (text, or image for
        base40M-imagevec), zeros = unconditional.

        Returns (B, C_out, N): eps for the first C channels, then the (unused) variance channels.
        """
        # Unit-norm vectors have per-entry variance 1/D; the model was trained on unit variance.
        text = self.clip_embed(text_embed * math.sqrt(text_embed.shape[1]))  # (B, W)
        t_emb = self._embed_time(t)
        return self._denoise(x, t_emb, [text[:, None], *self._time_tokens(t_emb)])


class ImageGridPointDiffusionTransformer(PointDiffusionTransformer):
    """base40M / base300M / base1B: conditions on CLIP's image token grid. Tokens: [time, grid, points]."""

    def __init__(self, config: PointDiffusionConfig) -> None:
        super().__init__(config)
        self.clip_embed = nn.Sequential(
            nn.LayerNorm(config.cond_width), nn.Linear(config.cond_width, config.width)
        )

    def _grid_tokens(self, grid: Tensor | None, batch: int, like: Tensor) -> Tensor:
        """grid: (B, D, L) CLIP image-grid features, or None for zeros (unconditional) -> (B, L, W)."""
        if grid is None:
            # Every zero token embeds to the same vector: embed one and repeat it.
            zero = like.new_zeros(1, 1, self.config.cond_width)
            return self.clip_embed(zero).expand(batch, self.config.grid_tokens, -1)
        return self.clip_embed(grid.transpose(1, 2))

    def forward(self, x: Tensor, t: Tensor, grid: Tensor | None = None) -> Tensor:
        """x: (B, C, N); t: (B,); grid: (B, D, L) CLIP image grid, zeros or None = unconditional.
        Returns (B, C_out, N)."""
        t_emb = self._embed_time(t)
        grid_tokens = self._grid_tokens(grid, x.shape[0], x)  # (B, L, W)
        return self._denoise(x, t_emb, [*self._time_tokens(t_emb), grid_tokens])


class UpsamplePointDiffusionTransformer(ImageGridPointDiffusionTransformer):
    """upsample: adds n_ctx points to cond_ctx low-res ones. Tokens: [time, grid, low-res, points].

    Trained with an optional CLIP image grid: for text-to-3D the grid is all zeros (None); from an image
    it is the same grid the image-grid base model saw.
    """

    def __init__(self, config: PointDiffusionConfig) -> None:
        super().__init__(config)
        self.cond_point_proj = nn.Linear(config.input_channels, config.width)
        self.register_buffer("channel_scales", torch.tensor(config.channel_scales, dtype=torch.float32))
        self.register_buffer("channel_biases", torch.tensor(config.channel_biases, dtype=torch.float32))

    def forward(self, x: Tensor, t: Tensor, low_res: Tensor, grid: Tensor | None = None) -> Tensor:  # type: ignore[override]
        """x: (B, C, N); t: (B,); low_res: (B, C, N_low) points in data space (xyz, rgb 0..255);
        grid: (B, D, L) CLIP image-grid features or None for zeros. Returns (B, C_out, N)."""
        grid_tokens = self._grid_tokens(grid, x.shape[0], x)  # (B, L, W)
        low_res = low_res * self.channel_scales[None, :, None] + self.channel_biases[None, :, None]
        low_res_tokens = self.cond_point_proj(low_res.transpose(1, 2))  # (B, N_low, W)
        t_emb = self._embed_time(t)
        return self._denoise(x, t_emb, [*self._time_tokens(t_emb), grid_tokens, low_res_tokens])


MODEL_CLASSES: dict[str, type[PointDiffusionTransformer]] = {
    "text": TextPointDiffusionTransformer,
    "image_grid": ImageGridPointDiffusionTransformer,
    "upsample": UpsamplePointDiffusionTransformer,
}


def build_model(config: PointDiffusionConfig) -> PointDiffusionTransformer:
    return MODEL_CLASSES[config.model_type](config)

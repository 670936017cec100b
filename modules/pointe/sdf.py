"""Point-E's SDF model: a point cloud -> the signed distance of any query point to its surface.

The official `sdf` checkpoint (CrossAttentionPointCloudSDFModel) loads with a strict key copy. Meshing
(marching cubes over a grid of these distances) is in mesh.py.

References:
1) Nichol et al., "Point-E", 2022, https://arxiv.org/abs/2212.08751 (appendix: the SDF regression model)
2) openai/point-e, point_e/models/sdf.py and perceiver.py: parameter names and the per-head k|v layout
   of `c_kv` follow them.

Shapes: B clouds, N cloud points, Q query points, W width, H heads, hs head size.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .config import SDFConfig
from .model import MLP, Transformer


class MultiheadCrossAttention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.c_q = nn.Linear(width, width)
        self.c_kv = nn.Linear(width, 2 * width)
        self.c_proj = nn.Linear(width, width)

    def keys_values(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """data: (B, N, W) normalised latents -> k, v, each (B, H, N, hs). Depends only on the cloud,
        so a whole grid of queries shares one computation."""
        B, N, W = data.shape
        # As in the checkpoint: c_kv is laid out per head as [k|v].
        kv = self.c_kv(data).view(B, N, self.heads, 2 * W // self.heads).transpose(1, 2)  # (B, H, N, 2*hs)
        k, v = kv.chunk(2, dim=-1)
        return k, v

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, Q, W = x.shape
        q = self.c_q(x).view(B, Q, self.heads, W // self.heads).transpose(1, 2)  # (B, H, Q, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, Q, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, Q, W))  # (B, Q, W)


class ResidualCrossAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = MultiheadCrossAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)  # queries
        self.ln_2 = nn.LayerNorm(width)  # latents
        self.mlp = MLP(width)
        self.ln_3 = nn.LayerNorm(width)

    def keys_values(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        return self.attn.keys_values(self.ln_2(latents))

    def forward(self, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), k, v)
        x = x + self.mlp(self.ln_3(x))
        return x


class SimplePerceiver(nn.Module):
    """Cross-attention only: queries read the latents, never each other."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList([ResidualCrossAttentionBlock(width, heads) for _ in range(layers)])


Memory = list[tuple[Tensor, Tensor]]  # per decoder block: (k, v), each (B, H, N, hs)


class PointCloudSDFModel(nn.Module):
    """CrossAttentionPointCloudSDFModel. Call `encode(points)` once per cloud, then `predict_sdf` for
    as many query batches as needed; `forward` does both."""

    def __init__(self, config: SDFConfig) -> None:
        super().__init__()
        self.config = config
        W = config.width
        self.encoder_input_proj = nn.Linear(3, W)
        self.encoder = Transformer(W, config.encoder_layers, config.encoder_heads)
        self.decoder_input_proj = nn.Linear(3, W)
        self.decoder = SimplePerceiver(W, config.decoder_layers, config.decoder_heads)
        self.ln_post = nn.LayerNorm(W)
        self.output_proj = nn.Linear(W, 1)

    def encode(self, points: Tensor) -> Memory:
        """points: (B, 3, N) xyz in data space -> every decoder block's keys and values."""
        latents = self.encoder(self.encoder_input_proj(points.transpose(1, 2)))  # (B, N, W), no ln_pre
        return [block.keys_values(latents) for block in self.decoder.resblocks]

    def predict_sdf(self, queries: Tensor, memory: Memory) -> Tensor:
        """queries: (B, 3, Q) xyz -> (B, Q) signed distances (negative inside)."""
        h = self.decoder_input_proj(queries.transpose(1, 2))  # (B, Q, W)
        for block, (k, v) in zip(self.decoder.resblocks, memory):
            h = block(h, k, v)
        return self.output_proj(self.ln_post(h))[..., 0]  # (B, Q)

    def forward(self, queries: Tensor, points: Tensor) -> Tensor:
        return self.predict_sdf(queries, self.encode(points))

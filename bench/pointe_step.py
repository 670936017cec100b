"""Times one denoiser call of the real-size Point-E base model (base40M-textvec, random weights):
batch 2 (classifier-free guidance: conditional + unconditional) over 1024 points, on CPU.

A Heun step is two such calls (one on the last step), so a 64-step base stage is 127 calls.

    python bench/pointe_step.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.pointe.config import DiffusionConfig, PointDiffusionConfig, SamplerConfig  # noqa: E402
from modules.pointe.diffusion import GaussianDiffusion  # noqa: E402
from modules.pointe.model import build_model  # noqa: E402
from modules.pointe.sampler import gaussian_denoiser  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = PointDiffusionConfig.base40m_textvec()
    model = build_model(config).eval()
    text = torch.randn(1, config.cond_width)
    text = torch.cat([text / text.norm(), torch.zeros_like(text)])  # (2, 768): conditional, unconditional
    denoise = gaussian_denoiser(
        lambda x_t, t: model(x_t, t, text), GaussianDiffusion(DiffusionConfig.base()), SamplerConfig.base()
    )
    x = torch.randn(1, config.input_channels, config.n_ctx) * 10.0
    sigma = torch.full((1,), 10.0)

    times = []
    with torch.no_grad():
        denoise(x, sigma)  # warm-up
        for _ in range(args.repeats):
            start = time.perf_counter()
            denoise(x, sigma)
            times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"base40M-textvec ({params:.1f} M params), batch 2 x {config.n_ctx} points, {args.threads} threads")
    median, best = statistics.median(times), min(times)
    print(f"one denoiser call: median {median:.3f} s (min {best:.3f} s, {args.repeats} runs)")


if __name__ == "__main__":
    main()

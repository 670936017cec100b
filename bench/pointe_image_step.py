"""One denoising step of the image-grid Point-E base (base40M, random weights), ours against the official
code on the same weights: one model call at batch 2 (classifier-free guidance: a CLIP image grid and its
zero copy) over 1024 points and 256 grid tokens, on CPU. Prints the median times and their ratio.

    python bench/pointe_image_step.py --official /path/to/point-e [--repeats 5] [--threads N]

Without an official checkout it says so and exits cleanly (see bench/pointe_official.py).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.pointe_official import arguments, official_modules  # noqa: E402
from modules.pointe.config import PointDiffusionConfig  # noqa: E402
from modules.pointe.model import build_model  # noqa: E402


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    official = official_modules(args, "pointe_image_step")
    if official is None:
        return

    config = PointDiffusionConfig.base40m()
    ours = build_model(config).eval()
    theirs = official["model_from_config"](official["MODEL_CONFIGS"]["base40M"], torch.device("cpu")).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # the same weights, key for key
    x = torch.randn(2, config.input_channels, config.n_ctx)
    t = torch.tensor([500, 500])
    grid = torch.randn(2, config.cond_width, config.grid_tokens)
    grid[1] = 0  # the unconditional half
    calls = {"ours": lambda: ours(x, t, grid), "official": lambda: theirs(x, t, embeddings=grid)}

    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.no_grad():
        difference = (calls["ours"]() - calls["official"]()).abs().max().item()  # also the warm-up
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"base40M image grid, batch 2 x ({config.n_ctx} points + {config.grid_tokens} grid tokens), {args.threads} threads")
    for name in calls:
        print(f"  {name:8s} median {median[name]:.3f} s (min {min(times[name]):.3f} s, {args.repeats} runs)")
    print(f"  largest output difference {difference:.2e}")
    print(f"ratio official / ours: {median['official'] / median['ours']:.2f}x")


if __name__ == "__main__":
    main()

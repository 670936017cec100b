"""Importing the official openai/point-e code for the benchmarks that compare against it.

The official code is not part of Atelier: point a benchmark at a checkout with `--official PATH` (or
$POINTE_OFFICIAL), e.g. `git clone https://github.com/openai/point-e /tmp/point-e`. Its image models
build OpenAI's `clip` package in their constructor; where that package is missing, an empty stand-in
takes its place (the benchmarks pass CLIP grids in directly and never call CLIP).
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from pathlib import Path
from typing import Any

import torch


def official_root(given: str | None) -> Path | None:
    """The checkout to compare against, or None (the caller then skips)."""
    path = given or os.environ.get("POINTE_OFFICIAL")
    if not path:
        return None
    root = Path(path).expanduser()
    if not (root / "point_e" / "models" / "configs.py").is_file():
        raise SystemExit(f"{root} is not an openai/point-e checkout (point_e/models/configs.py is missing)")
    return root


def import_official(root: Path) -> dict[str, Any]:
    """The official modules the benchmarks use, imported from root."""
    sys.path.insert(0, str(root))
    try:
        import clip  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("clip")
        stand_in.load = lambda name, device=None, download_root=None: (torch.nn.Module(), None)  # type: ignore[attr-defined]
        stand_in.tokenize = None  # type: ignore[attr-defined]
        sys.modules["clip"] = stand_in
    from point_e.models.configs import MODEL_CONFIGS, model_from_config
    from point_e.util.pc_to_mesh import marching_cubes_mesh
    from point_e.util.point_cloud import PointCloud

    return {
        "MODEL_CONFIGS": MODEL_CONFIGS,
        "model_from_config": model_from_config,
        "marching_cubes_mesh": marching_cubes_mesh,
        "PointCloud": PointCloud,
    }


def skip(name: str) -> None:
    print(f"{name}: skipped, no official checkout (pass --official PATH or set POINTE_OFFICIAL)")


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options every comparison takes: --official and --threads."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", help="an openai/point-e checkout (default: $POINTE_OFFICIAL)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    return parser


def official_modules(args: argparse.Namespace, name: str) -> dict[str, Any] | None:
    """The official modules, threads set and torch seeded; None (after saying so) without a checkout."""
    root = official_root(args.official)
    if root is None:
        skip(name)
        return None
    official = import_official(root)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return official

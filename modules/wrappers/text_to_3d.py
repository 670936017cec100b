"""Text-to-3D: Point-E (modules/pointe) turns a prompt into a coloured point cloud, saved as PLY and GLB.

Components: the loaded object is a `PointEPipeline`: the CLIP text tower and tokenizer, the base model
(1024 points, guided) and the upsampler (3072 more, unguided), each stage sampled with Karras-Heun steps.

Where the weights come from (the catalogue entry's `source`):
- `hub: openai/clip-vit-large-patch14`: the official model. The hub id names the CLIP text tower the
  base model was trained with; the two Point-E checkpoints have no hub repo, so modules/pointe/weights.py
  downloads them once from openai's blob store into its cache folder (or finds them there, put by hand).
- `path: FOLDER`: a folder written by `PointEPipeline.save_pretrained` (the tiny models use this, and
  `PointEPipeline.from_official().save_pretrained(FOLDER)` turns the official weights into one).

The same seed gives the same points: noise and churn are drawn from the request's own CPU generator.

Files (`write_point_cloud`, written by trimesh): the cloud is turned from Point-E's Z-up frame to glTF's
+Y up by a rotation (not a mirror, so nothing turns inside out), in the GLB and in the PLY alike: PLY has
no up convention, and Y-up is what the in-app viewer and most tools show upright. The GLB stores its
colours in COLOR_0 as linear floats, as glTF defines them; the PLY keeps the sRGB bytes. Both carry the
prompt, model, seed and settings: the PLY in header comments, the GLB in `asset.extras`
(modules/wrappers/metadata.py).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from modules.wrappers.base import (
    MAX_SEED,
    ModelUnavailable,
    OnStep,
    Settings,
    Step,
    Wrapper,
    check_prompt,
    hub_reachable,
    resolve_seed,
    stream_from_thread,
)
from modules.wrappers.metadata import Parameters, generation_parameters, with_ply_comments

log = logging.getLogger(__name__)
#: Parameters of CLIP ViT-L/14's text tower with its projection (the official model's text encoder).
CLIP_TEXT_PARAMETERS = 123_700_000
#: Stage names the sampler reports, and "download" for fetching the official checkpoints.
STAGES = ("download", "base", "upsample")
#: Point-E's Z-up frame -> glTF's +Y up: -90 degrees about X, (x, y, z) -> (x, z, -y). A rotation
#: (determinant +1), where swapping y and z would mirror the object.
Z_UP_TO_Y_UP = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float32)
#: glTF's componentType for 32-bit floats.
GLTF_FLOAT = 5126


def srgb_to_linear(colors: np.ndarray) -> np.ndarray:
    """sRGB bytes (..., C) -> linear floats in [0, 1] (IEC 61966-2-1, the curve glTF names)."""
    encoded = colors.astype(np.float64) / 255.0
    return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4).astype(np.float32)


def write_point_cloud(points: np.ndarray, colors: np.ndarray, stem: Path, parameters: Parameters) -> tuple[Path, Path]:
    """`stem`.ply and `stem`.glb of a Point-E cloud (Z-up points, sRGB bytes), Y-up and carrying `parameters`."""
    import trimesh
    from trimesh.exchange.gltf import export_glb

    cloud = trimesh.PointCloud(points @ Z_UP_TO_Y_UP.T, colors=colors)
    linear = srgb_to_linear(cloud.colors)
    linear[:, 3] = cloud.colors[:, 3] / 255.0  # alpha has no transfer curve

    def colors_as_linear_floats(buffers: Any, tree: dict[str, Any]) -> None:
        """trimesh's buffer hook: COLOR_0 becomes linear floats (8 bits of linear would band the darks)."""
        (mesh,) = tree["meshes"]
        accessor = list(tree["accessors"].values())[mesh["primitives"][0]["attributes"]["COLOR_0"]]
        buffers[list(buffers)[accessor["bufferView"]]] = linear.astype("<f4").tobytes()
        accessor["componentType"] = GLTF_FLOAT
        for stale in ("normalized", "min", "max"):  # bounds of the bytes; optional for colours
            accessor.pop(stale, None)

    def with_extras(tree: dict[str, Any]) -> None:
        tree["asset"]["extras"] = dict(parameters)

    ply, glb = stem.with_suffix(".ply"), stem.with_suffix(".glb")
    ply.write_bytes(with_ply_comments(cloud.export(file_type="ply"), parameters))
    glb.write_bytes(export_glb(cloud, tree_postprocessor=with_extras, buffer_postprocessor=colors_as_linear_floats))
    return ply, glb


class PointCloudSettings(Settings):
    guidance: float = Field(3.0, ge=0.0, le=30.0, description="classifier-free guidance of the base stage (the upsampler runs unguided)")
    num_steps: int = Field(64, ge=1, le=256, description="Heun steps per stage (base, then upsampler); official: 64")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed")


@dataclass(frozen=True)
class StageStep(Step):
    """Progress inside one stage: `step` of `total` done in `stage` ("download" counts megabytes)."""

    stage: str = "base"


@dataclass(frozen=True)
class PointCloudResult:
    points: np.ndarray  # (N, 3) float32, in Point-E's Z-up frame (the files are turned Y-up)
    colors: np.ndarray  # (N, 3) uint8
    ply: Path
    glb: Path
    seed: int
    seconds: float  # sampling, both stages
    steps: int  # Heun steps, both stages

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


class PointEWrapper(Wrapper):
    """Point-E text-to-point-cloud (official base40M-textvec + upsample, or a saved pipeline folder)."""

    task = "pointcloud"
    settings_schema = PointCloudSettings
    #: The fewer-steps preset the tab offers where sampling is slow (real-size models on CPU).
    fast_steps: ClassVar[int] = 16

    # -- where the files are -----------------------------------------------------------------------

    def official(self) -> bool:
        return self.entry.source.hub is not None

    def missing_checkpoints(self) -> list[str]:
        """The official checkpoint files not yet in the Point-E cache (each with its URL and folder)."""
        from modules.pointe.checkpoints import OFFICIAL_CHECKPOINTS, default_cache_dir

        folder = default_cache_dir()
        return [
            f"{c.filename} (from {c.url}, into {folder})"
            for c in OFFICIAL_CHECKPOINTS.values()
            if not (folder / c.filename).is_file()
        ]

    def availability(self) -> str | None:
        if not self.official():
            return super().availability()
        missing = self.missing_checkpoints()
        clip = super().availability()  # the CLIP text tower in the Hugging Face cache
        parts = []
        if missing:
            parts.append(
                "the Point-E checkpoints " + "; ".join(missing) + " are downloaded on first use (~160 MB each), "
                "or put there by hand (the folder follows $ATELIER_CACHE or $XDG_CACHE_HOME)"
            )
        if clip:
            parts.append(clip)
        return ". ".join(parts) or None

    def estimate_bytes(self) -> int:
        if not self.official():
            return super().estimate_bytes()
        from modules.pointe.checkpoints import OFFICIAL_CHECKPOINTS, default_cache_dir

        files = [default_cache_dir() / c.filename for c in OFFICIAL_CHECKPOINTS.values()]
        checkpoints = sum(f.stat().st_size if f.is_file() else 162_000_000 for f in files)
        return checkpoints + CLIP_TEXT_PARAMETERS * 4

    def stage_configs(self) -> tuple[Any, Any]:
        """(base, upsampler) `PointDiffusionConfig`s, read without loading weights."""
        from modules.pointe.config import PointDiffusionConfig

        if self.official():
            return PointDiffusionConfig.base40m_textvec(), PointDiffusionConfig.upsample()
        base, upsampler = self.config_json("base/config.json"), self.config_json("upsampler/config.json")
        if base is None or upsampler is None:
            return PointDiffusionConfig.base40m_textvec(), PointDiffusionConfig.upsample()
        return PointDiffusionConfig.from_dict(base), PointDiffusionConfig.from_dict(upsampler)

    # -- loading -----------------------------------------------------------------------------------

    def fetch_checkpoints(self, on_progress: Callable[[int, int | None], None] | None = None) -> None:
        """Download the official checkpoints not yet cached; raises ModelUnavailable naming the files."""
        from modules.pointe.checkpoints import OFFICIAL_CHECKPOINTS, CheckpointUnavailableError, checkpoint_path

        for name, checkpoint in OFFICIAL_CHECKPOINTS.items():
            logged = [0]

            def progress(done: int, total: int | None, filename: str = checkpoint.filename) -> None:
                if done - logged[0] >= 16 << 20 or done == total:  # a log line every 16 MB
                    logged[0] = done
                    log.info("downloading %s: %d of %s MB", filename, done >> 20, total >> 20 if total else "?")
                if on_progress is not None:
                    on_progress(done, total)

            try:
                checkpoint_path(name, on_progress=progress)
            except CheckpointUnavailableError as exc:
                raise ModelUnavailable(f"{self.entry.name}: {exc}") from None

    def load(self, device: str) -> Any:
        from modules.pointe.checkpoints import CheckpointUnavailableError
        from modules.pointe.pipeline import PointEPipeline

        source = self.entry.source
        if not self.official():
            location, _ = self.location()
            return self.loading(lambda: PointEPipeline.from_pretrained(location, device=device))
        self.fetch_checkpoints()
        clip_missing = super().availability()
        if clip_missing and not hub_reachable():
            raise ModelUnavailable(clip_missing)
        try:
            return self.loading(lambda: PointEPipeline.from_official(source.hub, device=device))
        except CheckpointUnavailableError as exc:
            raise ModelUnavailable(f"{self.entry.name}: {exc}") from None

    def modules_of(self, model: Any) -> list[Any]:
        return [model.base, model.upsampler, model.text_encoder]

    def move(self, model: Any, device: str) -> Any:
        return model.to(device)

    # -- 1. check inputs ---------------------------------------------------------------------------

    def check_inputs(self, prompt: object, settings: PointCloudSettings) -> str:
        return check_prompt(prompt, self.host.max_prompt_chars)

    def working_bytes(self, settings: PointCloudSettings) -> int:
        """Declared to the memory manager: the larger stage's attention scores and activations.

        Per stage: rows (2 with guidance: the unconditional copy) x tokens (points + conditioning) x
        width for the residual stream and MLP, plus rows x heads x tokens^2 for one layer's scores.
        """
        base, upsampler = self.stage_configs()
        stages = [
            (2 if settings.guidance > 0 else 1, base.n_ctx + 2, base),  # [text, time, points]
            (1, upsampler.n_ctx + upsampler.cond_ctx + upsampler.grid_tokens + 1, upsampler),  # unguided
        ]
        return max(
            rows * 4 * (tokens * config.width * 16 + config.heads * tokens * tokens) for rows, tokens, config in stages
        )

    # -- 2-4. generate -----------------------------------------------------------------------------

    def generate(
        self, prompt: str, on_step: OnStep | None = None, **overrides: Any
    ) -> Iterator[StageStep | PointCloudResult]:
        """Yield a `StageStep` per step (download, base, upsample), then one `PointCloudResult`.

        `on_step(i, total)` counts the sampling steps of both stages together; closing the generator
        (a Stop button) sets the request's stop flag, the sampler stops before its next step, and the
        lease ends once it has.
        """
        # 1. Check inputs
        settings = self.settings(**overrides)
        prompt = self.check_inputs(prompt, settings)
        seed = resolve_seed(settings.seed)
        # 2. Fetch the official checkpoints (first use only), outside the lease and stoppable
        if self.official() and self.missing_checkpoints():
            yield from self._relay(lambda emit, stop: self._download(emit, stop), None, settings)
        # 3. Sample both stages inside a lease that declares the attention's memory
        yield from self.manager.stream(
            self,
            lambda pipe: self._timed(pipe, prompt, settings, seed, on_step),
            working_bytes=self.working_bytes(settings),
        )

    def _download(self, emit: Callable[[StageStep], None], stop: threading.Event) -> None:
        class Stopped(Exception):
            pass

        def progress(done: int, total: int | None) -> None:
            if stop.is_set():
                raise Stopped
            emit(StageStep(done >> 20, (total or 0) >> 20, "download"))

        try:
            self.fetch_checkpoints(progress)
        except Stopped:
            pass

    def _relay(
        self,
        work: Callable[[Callable[[StageStep], None], threading.Event], Any],
        on_step: OnStep | None,
        settings: PointCloudSettings,
    ) -> Iterator[StageStep]:
        """Run `work(emit, stop)` in a worker thread; yield its steps and call `on_step` with both stages' count."""
        steps = stream_from_thread(work)
        while True:
            try:
                step = next(steps)
            except StopIteration as done:
                return done.value
            if on_step is not None and step.stage != "download":
                before = settings.num_steps if step.stage == "upsample" else 0
                on_step(before + step.step, 2 * settings.num_steps)
            yield step

    def _timed(
        self, pipe: Any, prompt: str, settings: PointCloudSettings, seed: int, on_step: OnStep | None
    ) -> Iterator[StageStep | PointCloudResult]:
        started = time.perf_counter()

        def sample(emit: Callable[[StageStep], None], stop: threading.Event) -> tuple[np.ndarray, np.ndarray]:
            return pipe(
                prompt,
                seed=seed,
                guidance_scale=settings.guidance,
                num_steps=settings.num_steps,
                on_step=lambda stage, i, total: emit(StageStep(i, total, stage)),
                should_stop=stop.is_set,
            )

        points, colors = yield from self._relay(sample, on_step, settings)
        seconds = time.perf_counter() - started
        # 4. Postprocess: coloured PLY and GLB carrying their parameters
        parameters = generation_parameters(self.entry, prompt, settings, seed=seed)
        yield self.postprocess(points, colors, parameters, seconds, 2 * settings.num_steps)

    def postprocess(
        self, points: np.ndarray, colors: np.ndarray, parameters: Parameters, seconds: float, steps: int
    ) -> PointCloudResult:
        seed = int(parameters["seed"])
        folder = self.host.output_dir / "pointcloud"
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{uuid.uuid4().hex[:6]}"
        ply, glb = write_point_cloud(points, colors, stem, parameters)
        return PointCloudResult(points, colors, ply, glb, seed, seconds, steps)


"""3D: Point-E (modules/pointe) turns a prompt or an image into a coloured point cloud, saved as PLY and
GLB, and optionally into a coloured mesh (GLB, OBJ, STL).

Two wrappers, one per condition:
- `point-e` (PointEWrapper): a `PointEPipeline`: the CLIP text tower and tokenizer, the base model
  (1024 points, guided) and the upsampler (3072 more, unguided).
- `point-e-image` (PointEImageWrapper): a `PointEImagePipeline`: the CLIP image tower, an image-grid base
  (or base40M-imagevec) and the upsampler on the same grid, both guided.
Both carry the SDF model: "make a mesh" evaluates it on a grid and runs marching cubes.

Where the weights come from (the catalogue entry's `source`):
- `hub: openai/clip-vit-large-patch14` (+ `file:` the official base checkpoint, e.g. `base_40m.pt`;
  default `base_40m_textvec.pt`): the official models. The hub id names the CLIP model the base was
  trained with; the Point-E checkpoints have no hub repo, so modules/pointe/checkpoints.py downloads them
  once from openai's blob store into its cache folder (or finds them there, put by hand).
- `path: FOLDER`: a folder written by the pipeline's `save_pretrained` (the tiny models use this).

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
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
#: Parameters of CLIP ViT-L/14's image tower with its projection (the official image models' encoder).
CLIP_IMAGE_PARAMETERS = 303_900_000
#: Stage names the wrappers report: "download" (official checkpoints, in MB), the two sampling stages,
#: and "mesh" (SDF query batches).
STAGES = ("download", "base", "upsample", "mesh")
#: Point-E's Z-up frame -> glTF's +Y up: -90 degrees about X, (x, y, z) -> (x, z, -y). A rotation
#: (determinant +1), where swapping y and z would mirror the object.
Z_UP_TO_Y_UP = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=np.float32)
#: glTF's componentType for 32-bit floats.
GLTF_FLOAT = 5126


def srgb_to_linear(colors: np.ndarray) -> np.ndarray:
    """sRGB bytes (..., C) -> linear floats in [0, 1] (IEC 61966-2-1, the curve glTF names)."""
    encoded = colors.astype(np.float64) / 255.0
    return np.where(encoded <= 0.04045, encoded / 12.92, ((encoded + 0.055) / 1.055) ** 2.4).astype(np.float32)


def glb_bytes(geometry: Any, rgba: np.ndarray, parameters: Parameters) -> bytes:
    """A GLB of one trimesh geometry (a point cloud, or a mesh with vertex colours `rgba`, sRGB bytes):
    COLOR_0 as linear floats, as glTF defines it, and `parameters` in `asset.extras`."""
    from trimesh.exchange.gltf import export_glb

    linear = srgb_to_linear(rgba)
    linear[:, 3] = rgba[:, 3] / 255.0  # alpha has no transfer curve

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

    return export_glb(geometry, tree_postprocessor=with_extras, buffer_postprocessor=colors_as_linear_floats)


def write_point_cloud(points: np.ndarray, colors: np.ndarray, stem: Path, parameters: Parameters) -> tuple[Path, Path]:
    """`stem`.ply and `stem`.glb of a Point-E cloud (Z-up points, sRGB bytes), Y-up and carrying `parameters`."""
    import trimesh

    cloud = trimesh.PointCloud(points @ Z_UP_TO_Y_UP.T, colors=colors)
    ply, glb = stem.with_suffix(".ply"), stem.with_suffix(".glb")
    ply.write_bytes(with_ply_comments(cloud.export(file_type="ply"), parameters))
    glb.write_bytes(glb_bytes(cloud, cloud.colors, parameters))
    return ply, glb


def write_mesh(mesh: tuple[np.ndarray, ...], stem: Path, parameters: Parameters) -> MeshFiles:
    """`stem`.glb (vertex colours, parameters inside), .obj (vertex colours) and .stl (geometry, for
    printing) of a marching-cubes mesh in Point-E's Z-up frame, turned Y-up like the cloud."""
    import trimesh

    vertices, faces, normals, vertex_colors = mesh
    surface = trimesh.Trimesh(
        vertices @ Z_UP_TO_Y_UP.T, faces, vertex_normals=normals @ Z_UP_TO_Y_UP.T, vertex_colors=vertex_colors, process=False
    )
    files = MeshFiles(stem.with_suffix(".glb"), stem.with_suffix(".obj"), stem.with_suffix(".stl"), len(vertices), len(faces))
    files.glb.write_bytes(glb_bytes(surface, surface.visual.vertex_colors, parameters))
    surface.export(files.obj)
    surface.export(files.stl)
    return files


class PointCloudSettings(Settings):
    guidance: float = Field(3.0, ge=0.0, le=30.0, description="classifier-free guidance of the base stage")
    num_steps: int = Field(64, ge=1, le=256, description="Heun steps per stage (base, then upsampler); official: 64")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed")
    make_mesh: bool = Field(False, description="also turn the cloud into a coloured mesh (SDF model + marching cubes)")
    mesh_grid: int = Field(128, ge=16, le=256, description="marching-cubes samples per axis; official: 128")


@dataclass(frozen=True)
class StageStep(Step):
    """Progress inside one stage: `step` of `total` done in `stage` ("download" counts megabytes)."""

    stage: str = "base"


@dataclass(frozen=True)
class MeshFiles:
    glb: Path  # with vertex colours; what the viewer shows
    obj: Path  # with vertex colours
    stl: Path  # geometry only, for printing
    vertices: int
    faces: int

    @property
    def paths(self) -> list[Path]:
        return [self.glb, self.obj, self.stl]


@dataclass(frozen=True)
class PointCloudResult:
    points: np.ndarray  # (N, 3) float32, in Point-E's Z-up frame (the files are turned Y-up)
    colors: np.ndarray  # (N, 3) uint8
    ply: Path
    glb: Path
    seed: int
    seconds: float  # sampling, both stages (and meshing)
    steps: int  # Heun steps, both stages
    mesh: MeshFiles | None = None
    #: Where the condition came from (image path: the source file and the prompt, seed and model its
    #: PNG parameters record); empty for text.
    lineage: dict[str, str] = field(default_factory=dict)

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


class PointEWrapper(Wrapper):
    """Point-E text-to-point-cloud (official base40M-textvec + upsample + sdf, or a saved pipeline folder)."""

    task = "pointcloud"
    settings_schema = PointCloudSettings
    #: The fewer-steps preset the tab offers where sampling is slow (real-size models on CPU).
    fast_steps: ClassVar[int] = 16
    #: What the pipeline is conditioned on: the tab offers text and image entries on different paths.
    condition: ClassVar[str] = "text"
    #: The official base checkpoint when the entry names none.
    default_base: ClassVar[str] = "base40M-textvec"
    encoder_parameters: ClassVar[int] = CLIP_TEXT_PARAMETERS

    # -- where the files are -----------------------------------------------------------------------

    def official(self) -> bool:
        return self.entry.source.hub is not None

    def base_checkpoint(self) -> str:
        """The official base checkpoint's name, from the entry's `file:` (e.g. base_40m.pt)."""
        from modules.pointe.checkpoints import BASE_CHECKPOINT_FILES

        file = self.entry.source.file
        if file is None:
            return self.default_base
        if file not in BASE_CHECKPOINT_FILES:
            raise ModelUnavailable(f"{self.entry.name}: source.file {file!r} is not one of {sorted(BASE_CHECKPOINT_FILES)}")
        return BASE_CHECKPOINT_FILES[file]

    def checkpoints(self) -> list[Any]:
        """The official checkpoints this entry runs: its base, the upsampler and the SDF model."""
        from modules.pointe.checkpoints import OFFICIAL_CHECKPOINTS

        return [OFFICIAL_CHECKPOINTS[name] for name in (self.base_checkpoint(), "upsample", "sdf")]

    def missing_checkpoints(self) -> list[str]:
        """The official checkpoint files not yet in the Point-E cache (each with its URL and folder)."""
        from modules.pointe.checkpoints import default_cache_dir

        folder = default_cache_dir()
        return [
            f"{c.filename} (from {c.url}, into {folder}, ~{c.approx_bytes / 1e6:,.0f} MB)"
            for c in self.checkpoints()
            if not (folder / c.filename).is_file()
        ]

    def availability(self) -> str | None:
        if not self.official():
            return super().availability()
        missing = self.missing_checkpoints()
        clip = super().availability()  # the CLIP tower in the Hugging Face cache
        parts = []
        if missing:
            parts.append(
                "the Point-E checkpoints " + "; ".join(missing) + " are downloaded on first use, "
                "or put there by hand (the folder follows $ATELIER_CACHE or $XDG_CACHE_HOME)"
            )
        if clip:
            parts.append(clip)
        return ". ".join(parts) or None

    def estimate_bytes(self) -> int:
        if not self.official():
            return super().estimate_bytes()
        from modules.pointe.checkpoints import default_cache_dir

        folder = default_cache_dir()
        sizes = [(folder / c.filename, c.approx_bytes) for c in self.checkpoints()]
        checkpoints = sum(path.stat().st_size if path.is_file() else size for path, size in sizes)
        return checkpoints + self.encoder_parameters * 4

    def stage_configs(self) -> tuple[Any, Any]:
        """(base, upsampler) `PointDiffusionConfig`s, read without loading weights."""
        from modules.pointe.checkpoints import OFFICIAL_CHECKPOINTS
        from modules.pointe.config import PointDiffusionConfig

        official = OFFICIAL_CHECKPOINTS[self.base_checkpoint()].config, PointDiffusionConfig.upsample()
        if self.official():
            return official
        base, upsampler = self.config_json("base/config.json"), self.config_json("upsampler/config.json")
        if base is None or upsampler is None:
            return official
        return PointDiffusionConfig.from_dict(base), PointDiffusionConfig.from_dict(upsampler)

    # -- loading -----------------------------------------------------------------------------------

    def fetch_checkpoints(self, on_progress: Callable[[int, int | None], None] | None = None) -> None:
        """Download the official checkpoints not yet cached; raises ModelUnavailable naming the files."""
        from modules.pointe.checkpoints import CheckpointUnavailableError, checkpoint_path

        for checkpoint in self.checkpoints():
            logged = [0]

            def progress(done: int, total: int | None, filename: str = checkpoint.filename) -> None:
                if done - logged[0] >= 16 << 20 or done == total:  # a log line every 16 MB
                    logged[0] = done
                    log.info("downloading %s: %d of %s MB", filename, done >> 20, total >> 20 if total else "?")
                if on_progress is not None:
                    on_progress(done, total)

            try:
                checkpoint_path(checkpoint.name, on_progress=progress)
            except CheckpointUnavailableError as exc:
                raise ModelUnavailable(f"{self.entry.name}: {exc}") from None

    def pipeline_class(self) -> Any:
        from modules.pointe.pipeline import PointEPipeline

        return PointEPipeline

    def load_official(self, device: str) -> Any:
        return self.pipeline_class().from_official(self.entry.source.hub, device=device)

    def load(self, device: str) -> Any:
        from modules.pointe.checkpoints import CheckpointUnavailableError

        if not self.official():
            location, _ = self.location()
            return self.loading(lambda: self.pipeline_class().from_pretrained(location, device=device))
        self.fetch_checkpoints()
        clip_missing = super().availability()
        if clip_missing and not hub_reachable():
            raise ModelUnavailable(clip_missing)
        try:
            return self.loading(lambda: self.load_official(device))
        except CheckpointUnavailableError as exc:
            raise ModelUnavailable(f"{self.entry.name}: {exc}") from None

    def modules_of(self, model: Any) -> list[Any]:
        return model.components()

    def move(self, model: Any, device: str) -> Any:
        return model.to(device)

    # -- 1. check inputs ---------------------------------------------------------------------------

    def check_inputs(self, prompt: object, settings: PointCloudSettings) -> str:
        return check_prompt(prompt, self.host.max_prompt_chars)

    def working_bytes(self, settings: PointCloudSettings) -> int:
        """Declared to the memory manager: the larger stage's attention scores and activations.

        Per stage: rows (2 with guidance: the unconditional copy) x tokens (points + conditioning) x
        width for the residual stream and MLP, plus rows x heads x tokens^2 for one layer's scores.
        Meshing needs far less: its queries attend to the cloud in chunks.
        """
        base, upsampler = self.stage_configs()
        base_condition = base.grid_tokens + 1 if base.model_type == "image_grid" else 2  # [time, grid] or [vector, time]
        upsampler_rows = 2 if self.condition == "image" else 1  # guided on the image grid
        stages = [
            (2 if settings.guidance > 0 else 1, base.n_ctx + base_condition, base),
            (upsampler_rows, upsampler.n_ctx + upsampler.cond_ctx + upsampler.grid_tokens + 1, upsampler),
        ]
        return max(
            rows * 4 * (tokens * config.width * 16 + config.heads * tokens * tokens) for rows, tokens, config in stages
        )

    # -- 2-4. generate -----------------------------------------------------------------------------

    def generate(
        self, prompt: str, on_step: OnStep | None = None, **overrides: Any
    ) -> Iterator[StageStep | PointCloudResult]:
        """Yield a `StageStep` per step (download, base, upsample, mesh), then one `PointCloudResult`.

        `on_step(i, total)` counts the sampling steps of both stages together; closing the generator
        (a Stop button) sets the request's stop flag, the sampler stops before its next step, and the
        lease ends once it has.
        """
        # 1. Check inputs
        settings = self.settings(**overrides)
        prompt = self.check_inputs(prompt, settings)
        yield from self._generate(prompt, {}, settings, on_step)

    def _generate(
        self, condition: Any, lineage: dict[str, str], settings: PointCloudSettings, on_step: OnStep | None
    ) -> Iterator[StageStep | PointCloudResult]:
        seed = resolve_seed(settings.seed)
        # 2. Fetch the official checkpoints (first use only), outside the lease and stoppable
        if self.official() and self.missing_checkpoints():
            yield from self._relay(lambda emit, stop: self._download(emit, stop), None, settings)
        # 3. Sample both stages (and mesh) inside a lease that declares the attention's memory
        yield from self.manager.stream(
            self,
            lambda pipe: self._timed(pipe, condition, lineage, settings, seed, on_step),
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
            if on_step is not None and step.stage in ("base", "upsample"):
                before = settings.num_steps if step.stage == "upsample" else 0
                on_step(before + step.step, 2 * settings.num_steps)
            yield step

    def _timed(
        self,
        pipe: Any,
        condition: Any,
        lineage: dict[str, str],
        settings: PointCloudSettings,
        seed: int,
        on_step: OnStep | None,
    ) -> Iterator[StageStep | PointCloudResult]:
        started = time.perf_counter()

        def sample(emit: Callable[[StageStep], None], stop: threading.Event) -> tuple[Any, ...]:
            points, colors = pipe(
                condition,
                seed=seed,
                guidance_scale=settings.guidance,
                num_steps=settings.num_steps,
                on_step=lambda stage, i, total: emit(StageStep(i, total, stage)),
                should_stop=stop.is_set,
            )
            if not settings.make_mesh:
                return points, colors, None
            mesh = pipe.make_mesh(
                points,
                colors,
                settings.mesh_grid,
                on_step=lambda i, total: emit(StageStep(i, total, "mesh")),
                should_stop=stop.is_set,
            )
            return points, colors, mesh

        points, colors, mesh = yield from self._relay(sample, on_step, settings)
        seconds = time.perf_counter() - started
        # 4. Postprocess: coloured PLY and GLB (and the mesh files), carrying their parameters and lineage
        prompt = condition if isinstance(condition, str) else ""
        parameters = generation_parameters(self.entry, prompt, settings, seed=seed, **lineage)
        yield self.postprocess(points, colors, parameters, seconds, 2 * settings.num_steps, mesh, lineage)

    def postprocess(
        self,
        points: np.ndarray,
        colors: np.ndarray,
        parameters: Parameters,
        seconds: float,
        steps: int,
        mesh: tuple[np.ndarray, ...] | None = None,
        lineage: dict[str, str] | None = None,
    ) -> PointCloudResult:
        seed = int(parameters["seed"])
        folder = self.host.output_dir / "pointcloud"
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}-{uuid.uuid4().hex[:6]}"
        ply, glb = write_point_cloud(points, colors, stem, parameters)
        mesh_files = write_mesh(mesh, stem.with_name(stem.name + "-mesh"), parameters) if mesh is not None else None
        return PointCloudResult(points, colors, ply, glb, seed, seconds, steps, mesh_files, dict(lineage or {}))


class PointEImageWrapper(PointEWrapper):
    """Point-E image-to-point-cloud (official base40M / base300M / base1B / base40M-imagevec, chosen by
    the entry's `source.file`, + upsample + sdf; or a saved PointEImagePipeline folder)."""

    condition = "image"
    default_base = "base40M"
    encoder_parameters = CLIP_IMAGE_PARAMETERS

    def pipeline_class(self) -> Any:
        from modules.pointe.image_pipeline import PointEImagePipeline

        return PointEImagePipeline

    def load_official(self, device: str) -> Any:
        return self.pipeline_class().from_official(self.base_checkpoint(), self.entry.source.hub, device=device)

    def check_inputs(self, image: object, settings: PointCloudSettings) -> Any:  # type: ignore[override]
        """The upload decoded and normalised to RGB; raises InvalidInput naming what is wrong with it."""
        from modules.wrappers.images import load_image

        return load_image(image, self.host.max_image_pixels).image  # type: ignore[arg-type]

    def generate(  # type: ignore[override]
        self, image: Any, on_step: OnStep | None = None, **overrides: Any
    ) -> Iterator[StageStep | PointCloudResult]:
        """As PointEWrapper.generate, from an image (a path, bytes or a PIL image). A path's file name,
        and the prompt, seed and model its PNG `parameters` record, become the result's lineage."""
        # 1. Check inputs
        settings = self.settings(**overrides)
        picture = self.check_inputs(image, settings)
        yield from self._generate(picture, image_lineage(image), settings, on_step)


def image_lineage(image: Any) -> dict[str, str]:
    """Where an image came from: its file name, and the prompt, seed and model of an Atelier (or
    AUTOMATIC1111) PNG's `parameters` chunk. Empty for in-memory images."""
    if not isinstance(image, (str, Path)):
        return {}
    from PIL import Image

    lineage = {"source_image": Path(image).name}
    try:
        with Image.open(image) as opened:
            opened.load()  # text chunks after the pixels are read only with them
            parameters = getattr(opened, "text", {}).get("parameters") or opened.info.get("parameters")
    except (OSError, ValueError):
        return lineage
    if not isinstance(parameters, str) or not parameters.strip():
        return lineage
    lines = parameters.strip().split("\n")
    settings_line = lines[-1]
    prompt_lines = [line for line in lines[:-1] if not line.startswith("Negative prompt:")]
    if prompt_lines:
        lineage["source_prompt"] = "\n".join(prompt_lines)
    for key, name in (("Seed", "source_seed"), ("Model", "source_model")):
        match = re.search(rf"(?:^|, ){key}: ([^,]+)", settings_line)
        if match:
            lineage[name] = match.group(1).strip()
    return lineage

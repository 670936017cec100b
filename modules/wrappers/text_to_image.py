"""Text-to-image with diffusers: any pipeline `AutoPipelineForText2Image` can build from a catalogue entry.

Components: the loaded object is the diffusers pipeline itself (UNet or transformer, VAE, text encoders,
tokenizers, scheduler, and a safety checker where the model ships one and the policy wants it). Each
request gets its own view of it (`from_pipe`), so a scheduler choice never leaks into another request.

Safety-checker policy: `--safety-checker on|off` decides for every model; with `auto` (the default) each
entry's `safety_checker` in models.yaml decides, and an entry that says `auto` (or nothing) is checked
when the app is public (`--share`). A model that ships no checker cannot run where one is required.

Every PNG written records its parameters in a `parameters` text chunk, written exactly as AUTOMATIC1111
(1.9 and later) writes it for the same settings, so A1111's PNG Info, Civitai and other readers remake it:
- `Sampler` and `Schedule type` name what ran: the schedule is read from the scheduler's own config
  (Karras sigmas, or its timestep spacing: linspace = Uniform, leading = DDIM, trailing = SGM Uniform).
  "DPM++ 2M" runs on Karras sigmas, as A1111 does when no schedule is chosen.
- `RNG: CPU`: every seed's noise is drawn from a CPU generator, on every device.
- `Model hash`: the first 10 hex digits of the weights file's SHA-256, as A1111 computes it. For a
  single-file checkpoint that is the file itself (the same hash A1111 and Civitai show); for a diffusers
  folder it is the denoiser's weights (unet/ or transformer/ diffusion_pytorch_model.safetensors, else
  .bin), the file that makes the model what it is; sharded weights get no hash. Computed once per file
  (modules/wrappers/metadata.py keeps it).
- `Model`: the checkpoint's name as A1111 shows it: the file name without extension, else the hub
  repo's or the folder's name (e.g. `sd-turbo` for stabilityai/sd-turbo), not Atelier's catalogue id.
A1111's `Version` is left out: it names the A1111 release that made the image, and none did.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from modules.catalog import ModelEntry
from modules.memory import MemoryManager
from modules.wrappers.base import (
    MAX_SEED,
    HostSettings,
    InvalidInput,
    ModelUnavailable,
    OnStep,
    Settings,
    Step,
    Wrapper,
    check_prompt,
    relay_steps,
    resolve_seed,
)
from modules.wrappers.batching import Gather, all_stopped, report_to_all
from modules.wrappers.metadata import file_sha256

SchedulerName = Literal["default", "euler", "euler-a", "dpm++-2m", "ddim"]
#: scheduler choice -> (diffusers class name, config it runs with on top of the model's); "default" keeps
#: the model's own scheduler as configured
SCHEDULERS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "default": None,
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    # A1111 reads "DPM++ 2M" without a schedule as Karras, and that is the schedule it is known by.
    "dpm++-2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
}
#: diffusers class -> the sampler name AUTOMATIC1111 writes in its parameters
SAMPLER_NAMES = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "DPMSolverSDEScheduler": "DPM++ SDE",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
}
#: diffusers timestep spacing -> A1111's schedule type that picks the same timesteps
SPACING_SCHEDULES = {"linspace": "Uniform", "leading": "DDIM", "trailing": "SGM Uniform"}
#: Activation bytes per latent position, per image, per guidance branch, per UNet base channel and per
#: byte of dtype: an upper estimate (SD 1.5 at 512x512 in fp16 with guidance: about 2 GiB).
WORK_PER_CHANNEL = 400


class ImageSettings(Settings):
    negative_prompt: str = Field("", max_length=10_000, description="what to steer away from (needs guidance > 1)")
    num_steps: int = Field(25, ge=1, le=150, description="denoising steps")
    guidance: float = Field(7.5, ge=0.0, le=30.0, description="classifier-free guidance scale; 0 for turbo models")
    width: int = Field(512, ge=64, le=4096, multiple_of=8)
    height: int = Field(512, ge=64, le=4096, multiple_of=8)
    batch: int = Field(1, ge=1, le=8, description="images per request")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed; image i uses seed + i")
    scheduler: SchedulerName = "default"


@dataclass(frozen=True)
class GeneratedImage:
    path: Path
    seed: int
    parameters: str


@dataclass(frozen=True)
class ImageResult:
    images: list[GeneratedImage]
    seconds: float
    steps: int
    sampler: str
    schedule: str | None  # A1111's schedule type; None where A1111 has no equivalent
    withheld: int  # images the safety checker flagged; they are neither shown nor saved
    batch: int = 1  # requests denoised in the same pass

    @property
    def seed(self) -> int:
        return self.images[0].seed if self.images else -1

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.seconds if self.seconds > 0 else 0.0


def a1111_sampler(scheduler: Any) -> tuple[str, str | None]:
    """(Sampler, Schedule type) as A1111 names what a diffusers scheduler runs."""
    config: Mapping[str, Any] = scheduler.config
    name = type(scheduler).__name__
    sampler = SAMPLER_NAMES.get(name, name)
    if name == "DPMSolverMultistepScheduler" and config.get("algorithm_type") == "sde-dpmsolver++":
        sampler = "DPM++ 2M SDE"
    for flag, schedule in (("use_karras_sigmas", "Karras"), ("use_exponential_sigmas", "Exponential"), ("use_beta_sigmas", "Beta")):
        if config.get(flag):
            return sampler, schedule
    return sampler, SPACING_SCHEDULES.get(config.get("timestep_spacing", ""))


def scheduler_for(choice: str, model_scheduler: Any) -> Any:
    """A fresh scheduler for a `SCHEDULERS` choice, built from the model's own scheduler config."""
    import diffusers

    name, runs_with = SCHEDULERS[choice] or (type(model_scheduler).__name__, {})
    return getattr(diffusers, name).from_config(model_scheduler.config, **runs_with)


def a1111_quote(value: object) -> str:
    """A value as A1111 writes it: JSON-quoted when it holds a comma, colon or newline."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(mark in text for mark in ",:\n") else text


def parameters_text(
    prompt: str,
    settings: ImageSettings,
    seed: int,
    sampler: tuple[str, str | None],
    model_name: str,
    model_hash: str | None,
) -> str:
    """The generation parameters exactly as AUTOMATIC1111 writes them in a PNG's `parameters` chunk.

    Keys in A1111's order; absent values are left out, as A1111 does. diffusers runs no guidance at a
    scale of 1 or below, which A1111 writes as `CFG scale: 1` (its 0 would mean the unconditional
    prediction alone).
    """
    name, schedule = sampler
    fields = {
        "Steps": settings.num_steps,
        "Sampler": name,
        "Schedule type": schedule,
        "CFG scale": f"{max(settings.guidance, 1.0):g}",
        "Seed": seed,
        "Size": f"{settings.width}x{settings.height}",
        "Model hash": model_hash,
        "Model": model_name,
        "RNG": "CPU",  # every seed's noise comes from a CPU generator (see `_denoise`)
    }
    line = ", ".join(f"{key}: {a1111_quote(value)}" for key, value in fields.items() if value is not None)
    negative = f"\nNegative prompt: {settings.negative_prompt}" if settings.negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


@dataclass(frozen=True)
class DenoiseRequest:
    """One caller's share of a denoising pass."""

    pipe: Any  # the pipeline with this request's fresh scheduler (the pass runs the first request's)
    prompt: str
    settings: ImageSettings
    seeds: list[int]
    report: OnStep
    stop: threading.Event


class DiffusersTextToImage(Wrapper):
    task = "image"
    settings_schema = ImageSettings

    def __init__(self, entry: ModelEntry, manager: MemoryManager, host: HostSettings | None = None) -> None:
        super().__init__(entry, manager, host)
        # Requests that reach the model together with the same steps, guidance and size share a pass.
        self._together: Gather[DenoiseRequest, tuple[list[Any], list[bool]]] = Gather(self._denoise)

    # -- policy ----------------------------------------------------------------------------------

    def safety_required(self) -> bool:
        chosen = self.host.safety_checker
        if chosen == "auto":
            chosen = self.entry.safety_checker or "auto"
        return self.host.public if chosen == "auto" else chosen == "on"

    def ships_safety_checker(self) -> bool | None:
        """Whether the model's files include a safety checker (None: unknown until downloaded)."""
        index = self.config_json("model_index.json")
        if index is None:
            return None
        component = index.get("safety_checker")
        return bool(component and component[0])

    def safety_note(self) -> str:
        required, ships = self.safety_required(), self.ships_safety_checker()
        why = {
            "on": "this server requires it (--safety-checker on)",
            "off": "this server turns it off (--safety-checker off)",
        }.get(self.host.safety_checker)
        if why is None:
            policy = self.entry.safety_checker or "auto"
            why = (
                f"models.yaml sets it {policy} for this model"
                if policy != "auto"
                else ("the app is shared publicly" if self.host.public else "the app is private; it turns on with --share")
            )
        if required and ships is False:
            return f"**Safety checker: required** ({why}), but this model ships none, so it cannot generate here."
        if required:
            return f"**Safety checker: on** ({why}); flagged images are withheld."
        return f"**Safety checker: off** ({why})."

    # -- 1. check inputs -------------------------------------------------------------------------

    def check_inputs(self, prompt: object, settings: ImageSettings) -> str:
        text = check_prompt(prompt, self.host.max_prompt_chars)
        limit = self.host.max_image_side
        for name in ("width", "height"):
            value = getattr(settings, name)
            if value > limit:
                raise InvalidInput(f"{name}={value} is over this server's limit of {limit} pixels (--max-image-side)")
        if self.safety_required() and self.ships_safety_checker() is False:
            raise InvalidInput(
                f"model={self.entry.id!r}: this server requires a safety checker and {self.entry.name} ships none"
            )
        return text

    # -- what the PNG names ------------------------------------------------------------------------

    def checkpoint_name(self) -> str:
        """The model's name as A1111 writes it: the checkpoint file's stem, else the repo's or folder's name."""
        source = self.entry.source
        if source.file:
            return Path(source.file).stem
        if source.hub:
            return source.hub.split("/")[1]
        folder = source.local_folder()
        return folder.name if folder else self.entry.id

    def weights_file(self) -> Path | None:
        """The file `Model hash` is computed from (see the module's docstring); None when there is no one file."""
        source = self.entry.source
        if source.file:
            return self.cached_file(source.file)
        components = self.config_json("model_index.json") or {}
        denoiser = next((name for name in ("unet", "transformer") if name in components), None)
        if denoiser is None:
            return None
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if (path := self.cached_file(f"{denoiser}/{name}")) is not None:
                return path
        return None

    def model_hash(self) -> str | None:
        """A1111's `Model hash`: the first 10 hex digits of the weights file's SHA-256 (hashed once per file)."""
        path = self.weights_file()
        return file_sha256(path)[:10] if path else None

    def working_bytes(self, settings: ImageSettings) -> int:
        """Declared to the memory manager: grows with width x height, batch and the guidance branches."""
        unet = self.config_json("unet/config.json") or {}
        base_channels = (unet.get("block_out_channels") or [320])[0]
        branches = 2 if settings.guidance > 1 else 1
        positions = (settings.width // 8) * (settings.height // 8)  # latent pixels (VAE factor 8)
        element = 4 if self.dtype_name == "float32" else 2
        return settings.batch * branches * positions * base_channels * WORK_PER_CHANNEL * element

    # -- loading -----------------------------------------------------------------------------------

    def load(self, device: str) -> Any:
        from diffusers import AutoPipelineForText2Image

        location, options = self.location()
        if not self.safety_required():
            # Not loading the checker at all saves its ~1.2 GB; pipelines without one ignore this.
            options |= {"safety_checker": None, "requires_safety_checker": False}
        # Never run code shipped with a model: a public link must not execute a stranger's repo.
        options["trust_remote_code"] = False
        pipe = self.loading(lambda: AutoPipelineForText2Image.from_pretrained(location, dtype=self.torch_dtype(), **options))
        if self.safety_required() and getattr(pipe, "safety_checker", None) is None:
            raise ModelUnavailable(f"{self.entry.name} ships no safety checker, and this server requires one")
        self.model_hash()  # hashed here, while the weights are fresh in the page cache, not by a request
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    def modules_of(self, model: Any) -> list[Any]:
        import torch

        return [component for component in model.components.values() if isinstance(component, torch.nn.Module)]

    def move(self, model: Any, device: str) -> Any:
        return model.to(device)

    # -- generate ----------------------------------------------------------------------------------

    def generate(
        self, prompt: str, on_step: OnStep | None = None, **overrides: Any
    ) -> Iterator[Step | ImageResult]:
        """Yield a `Step` per denoising step, then one `ImageResult`; closing the generator stops it.

        Requests with the same steps, guidance, size and scheduler that run at the same time are
        denoised in one batch, each image with its own seed."""
        # 1. Check inputs
        settings = self.settings(**overrides)
        prompt = self.check_inputs(prompt, settings)
        # 2. Pick the seeds: image i of a batch uses seed + i, so each one can be remade alone
        first = resolve_seed(settings.seed)
        seeds = [(first + i) % (MAX_SEED + 1) for i in range(settings.batch)]
        # 3. Denoise inside a lease that declares the latents' and activations' memory
        shared = settings.model_dump_json(include={"num_steps", "guidance", "width", "height", "scheduler"})
        with self._together.in_flight(shared) as submit:
            yield from self.manager.stream(
                self,
                lambda pipe: self._timed(pipe, prompt, settings, seeds, on_step, submit),
                working_bytes=self.working_bytes(settings),
            )

    def _timed(
        self,
        pipe: Any,
        prompt: str,
        settings: ImageSettings,
        seeds: list[int],
        on_step: OnStep | None,
        submit: Callable[[DenoiseRequest], tuple[tuple[list[Any], list[bool]], int]],
    ) -> Iterator[Step | ImageResult]:
        started = time.perf_counter()
        request_pipe = self._with_scheduler(pipe, settings.scheduler)
        (images, flagged), batch = yield from relay_steps(
            lambda report, stop: submit(DenoiseRequest(request_pipe, prompt, settings, seeds, report, stop)), on_step
        )
        seconds = time.perf_counter() - started
        # 4. Postprocess: save PNGs carrying their parameters
        yield self.postprocess(images, flagged, prompt, settings, seeds, request_pipe, seconds, batch)

    def _with_scheduler(self, pipe: Any, choice: str) -> Any:
        """A view of the pipeline with a fresh scheduler (schedulers keep per-run state)."""
        view = type(pipe).from_pipe(pipe, scheduler=scheduler_for(choice, pipe.scheduler))
        view.set_progress_bar_config(disable=True)
        return view

    def _denoise(self, requests: list[DenoiseRequest]) -> list[tuple[list[Any], list[bool]]]:
        """One pass for requests that share steps, guidance, size and scheduler: every prompt with its own
        seeds (one generator per image), every request sees each step, and the pass ends early only when
        all of them are stopped. Returns each request's (images, safety flags)."""
        import torch

        first = requests[0]
        settings = first.settings
        report, stopped = report_to_all(requests), all_stopped(requests)

        def on_step_end(pipeline: Any, index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            report(index + 1, getattr(pipeline, "num_timesteps", settings.num_steps))
            if stopped():
                pipeline._interrupt = True  # diffusers checks it before the next step
            return {}

        prompts = [request.prompt for request in requests for _ in request.seeds]
        negatives = [request.settings.negative_prompt for request in requests for _ in request.seeds]
        # Noise is drawn on the CPU, so a seed gives the same image on every device.
        generators = [torch.Generator("cpu").manual_seed(seed) for request in requests for seed in request.seeds]
        with torch.inference_mode():
            output = first.pipe(
                prompt=prompts,
                negative_prompt=negatives if any(negatives) else None,
                num_inference_steps=settings.num_steps,
                guidance_scale=settings.guidance,
                width=settings.width,
                height=settings.height,
                generator=generators,
                callback_on_step_end=on_step_end,
            )
        flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(output.images)
        shares, start = [], 0
        for request in requests:
            end = start + len(request.seeds)
            shares.append((output.images[start:end], [bool(flag) for flag in flagged[start:end]]))
            start = end
        return shares

    def postprocess(
        self,
        images: list[Any],
        flagged: list[bool],
        prompt: str,
        settings: ImageSettings,
        seeds: list[int],
        pipe: Any,
        seconds: float,
        batch: int,
    ) -> ImageResult:
        from PIL.PngImagePlugin import PngInfo

        sampler, model_name, model_hash = a1111_sampler(pipe.scheduler), self.checkpoint_name(), self.model_hash()
        folder = self.host.output_dir / "images"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        saved = []
        for image, seed, withheld in zip(images, seeds, flagged):
            if withheld:
                continue
            parameters = parameters_text(prompt, settings, seed, sampler, model_name, model_hash)
            info = PngInfo()
            info.add_text("parameters", parameters)
            path = folder / f"{stamp}-{seed}-{uuid.uuid4().hex[:6]}.png"
            image.save(path, pnginfo=info)
            saved.append(GeneratedImage(path, seed, parameters))
        return ImageResult(saved, seconds, settings.num_steps, *sampler, withheld=sum(flagged), batch=batch)

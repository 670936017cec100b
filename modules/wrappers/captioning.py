"""Image captioning: the contract every captioner follows, and the BLIP backend.

transformers 5 removed the `image-to-text` pipeline, so BLIP runs as `BlipProcessor` +
`BlipForConditionalGeneration` directly. Another captioner (Florence-2, say) subclasses `CaptionWrapper`
and supplies `load`, `modules_of` and `_caption`; validation of the upload, the lease, timing, progress
and stopping live here once.
"""

from __future__ import annotations

import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from modules.catalog import ModelEntry
from modules.memory import MemoryManager
from modules.wrappers.base import HostSettings, OnStep, Settings, Step, Wrapper, check_prompt, relay_steps, resolve_seed
from modules.wrappers.batching import Gather, all_stopped, report_to_all
from modules.wrappers.images import LoadedImage, load_image
from modules.wrappers.sampling import own_random_stream


class CaptionSettings(Settings):
    prefix: str = Field("", max_length=500, description="optional start of the caption, e.g. 'a photograph of'")
    decoding: Literal["beam", "nucleus"] = Field("beam", description="beam search (steady) or nucleus sampling (varied)")
    num_beams: int = Field(3, ge=1, le=8, description="beams for beam search")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="nucleus sampling: keep the likeliest tokens up to this mass")
    temperature: float = Field(1.0, gt=0.0, le=2.0, description="nucleus sampling temperature")
    max_length: int = Field(40, ge=4, le=128, description="most tokens to add after the prefix")


@dataclass(frozen=True)
class CaptionResult:
    text: str
    tokens: int
    seconds: float
    image: Any  # the RGB, upright picture the model saw (PIL)
    notes: tuple[str, ...]  # what was done to the upload (first frame of an animation, EXIF rotation, ...)
    batch: int = 1  # requests captioned in the same forward pass

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class CaptionWrapper(Wrapper):
    task = "caption"
    settings_schema = CaptionSettings

    def check_inputs(self, image: object, settings: CaptionSettings) -> LoadedImage:
        """The upload decoded and normalised; raises InvalidInput naming what is wrong with it."""
        if settings.prefix.strip():
            check_prompt(settings.prefix, self.host.max_prompt_chars, name="prefix")
        return load_image(image, self.host.max_image_pixels)  # type: ignore[arg-type]

    def working_bytes(self, settings: CaptionSettings) -> int:
        """Declared to the memory manager: vision activations plus the decoder's cache for every beam."""
        config = self.config_json("config.json") or {}
        text, vision = config.get("text_config") or {}, config.get("vision_config") or {}
        patches = (vision.get("image_size", 384) // vision.get("patch_size", 16)) ** 2 + 1
        element = 4 if self.dtype_name == "float32" else 2
        vision_bytes = patches * vision.get("hidden_size", 1024) * vision.get("num_hidden_layers", 24) * 8 * element
        beams = settings.num_beams if settings.decoding == "beam" else 1
        length = settings.max_length + patches  # self- and cross-attention caches
        text_bytes = beams * length * text.get("hidden_size", 768) * text.get("num_hidden_layers", 12) * 4 * element
        return vision_bytes + text_bytes

    def __init__(self, entry: ModelEntry, manager: MemoryManager, host: HostSettings | None = None) -> None:
        super().__init__(entry, manager, host)
        # Captions with the same settings that reach the model together share one forward pass.
        self._together: Gather[Request, tuple[str, int]] = Gather(self._caption_requests)

    def generate(self, image: object, on_step: OnStep | None = None, **overrides: Any) -> Iterator[Step | CaptionResult]:
        """Yield a `Step` per generated token, then one `CaptionResult`; closing the generator stops it.

        Requests with the same settings that run at the same time are captioned in one batch."""
        settings = self.settings(**overrides)
        with self._together.in_flight(settings.model_dump_json()) as submit:
            # 1. Check inputs: decode and validate the upload before any model is touched
            loaded = self.check_inputs(image, settings)
            # 2. Caption inside a lease
            yield from self.manager.stream(
                self, lambda model: self._timed(model, loaded, settings, on_step, submit), working_bytes=self.working_bytes(settings)
            )

    def _timed(
        self,
        model: Any,
        loaded: LoadedImage,
        settings: CaptionSettings,
        on_step: OnStep | None,
        submit: Callable[[Request], tuple[tuple[str, int], int]],
    ) -> Iterator[Step | CaptionResult]:
        started = time.perf_counter()
        (text, tokens), batch = yield from relay_steps(
            lambda report, stop: submit(Request(model, loaded.image, settings, report, stop)), on_step
        )
        yield CaptionResult(text.strip(), tokens, time.perf_counter() - started, loaded.image, loaded.notes, batch)

    def _caption_requests(self, requests: list[Request]) -> list[tuple[str, int]]:
        """One pass for requests that share settings (and so a model): every one sees every token's
        progress, and the pass ends early only when all of them are stopped."""
        first = requests[0]
        images = [request.image for request in requests]
        return self._caption(first.model, images, first.settings, report_to_all(requests), all_stopped(requests))

    @abstractmethod
    def _caption(
        self, model: Any, images: list[Any], settings: CaptionSettings, report: OnStep, stopped: Callable[[], bool]
    ) -> list[tuple[str, int]]:
        """Caption RGB PIL images in one pass in the worker thread: (text, tokens) for each, in order;
        report each token, end soon after `stopped()` turns true."""


@dataclass(frozen=True)
class Request:
    """One caller's share of a batch."""

    model: Any
    image: Any
    settings: CaptionSettings
    report: OnStep
    stop: threading.Event


@dataclass
class LoadedBlip:
    model: Any
    processor: Any


class BlipCaptioner(CaptionWrapper):
    """Salesforce BLIP (base or large), or any checkpoint of the same classes."""

    def load(self, device: str) -> LoadedBlip:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        location, options = self.location()
        processor = self.loading(lambda: BlipProcessor.from_pretrained(location, **options))
        model = self.loading(
            lambda: BlipForConditionalGeneration.from_pretrained(location, dtype=self.torch_dtype(), **options)
        )
        return LoadedBlip(model.to(device).eval(), processor)

    def modules_of(self, model: LoadedBlip) -> list[Any]:
        return [model.model]

    def _caption(
        self, model: LoadedBlip, images: list[Any], settings: CaptionSettings, report: OnStep, stopped: Callable[[], bool]
    ) -> list[tuple[str, int]]:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        prefix = settings.prefix.strip()
        inputs = model.processor(images=images, text=[prefix] * len(images) if prefix else None, return_tensors="pt")
        inputs = _to(inputs, model.model)
        start = inputs["input_ids"].shape[1] - 1 if "input_ids" in inputs else 1  # BLIP drops the prompt's [SEP]

        class ReportAndStop(StoppingCriteria):
            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
                report(min(input_ids.shape[1] - start, settings.max_length), settings.max_length)
                return torch.full((input_ids.shape[0],), stopped(), dtype=torch.bool, device=input_ids.device)

        decoding = (
            {"num_beams": settings.num_beams, "do_sample": False}
            if settings.decoding == "beam"
            else {"do_sample": True, "top_p": settings.top_p, "temperature": settings.temperature, "num_beams": 1}
        )
        # Nucleus sampling draws on the request's own stream (a fresh seed), never torch's global one.
        with torch.inference_mode(), own_random_stream(resolve_seed(-1)) as (lend, take_back):
            ids = model.model.generate(
                **inputs,
                max_new_tokens=settings.max_length,
                logits_processor=LogitsProcessorList([lend]),
                stopping_criteria=StoppingCriteriaList([take_back, ReportAndStop()]),
                **decoding,
            )
        pad = model.processor.tokenizer.pad_token_id
        # A row that ended early is padded to the longest; its own tokens are the ones before the padding.
        return [
            (model.processor.decode(row, skip_special_tokens=True), int((row[start:] != pad).sum()))
            for row in ids
        ]


def _to(inputs: Any, model: Any) -> Any:
    """Move processor outputs to the model's device; only the pixels take the model's dtype."""
    moved = inputs.to(model.device)
    moved["pixel_values"] = moved["pixel_values"].to(model.dtype)
    return moved

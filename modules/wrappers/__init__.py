"""Wrapper registry: the `wrapper:` names models.yaml may use, the task each serves, and its class.

Classes are imported only when a catalogue entry needs them, so start-up stays light. A new modality
adds one line here, one wrapper file, one tab file and entries in models.yaml.
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from modules.catalog import ModelEntry
from modules.memory import MemoryManager
from modules.wrappers.base import Wrapper

log = logging.getLogger(__name__)

#: wrapper name -> (task, "module:Class")
WRAPPERS: dict[str, tuple[str, str]] = {
    "transformers-chat": ("chat", "modules.wrappers.chat:TransformersChat"),
    "llama-cpp-chat": ("chat", "modules.wrappers.llama_chat:LlamaCppChat"),
    "diffusers-text-to-image": ("image", "modules.wrappers.text_to_image:DiffusersTextToImage"),
    "blip-captioning": ("caption", "modules.wrappers.captioning:BlipCaptioner"),
    "transformers-musicgen": ("music", "modules.wrappers.text_to_music:TransformersMusicgen"),
    "transformers-musicgen-melody": ("music", "modules.wrappers.text_to_music:TransformersMusicgenMelody"),
    "point-e": ("pointcloud", "modules.wrappers.text_to_3d:PointEWrapper"),
    "point-e-image": ("pointcloud", "modules.wrappers.text_to_3d:PointEImageWrapper"),
}


def wrapper_tasks() -> dict[str, str]:
    return {name: task for name, (task, _) in WRAPPERS.items()}


def wrapper_class(name: str) -> type[Wrapper]:
    module_name, class_name = WRAPPERS[name][1].split(":")
    return getattr(import_module(module_name), class_name)


def build_wrapper(entry: ModelEntry, manager: MemoryManager, **options: Any) -> Wrapper:
    """The entry's first `prefer` wrapper usable on this device, else its `wrapper`.

    The chosen name is written into the entry the wrapper keeps, and the wrapper's `backend_note` says
    which backend runs and why a preferred one was passed over, for the UI to show.
    """
    skipped: list[str] = []
    for name in entry.prefer:
        cls = wrapper_class(name)
        reason = cls.unusable_reason(manager.device)
        if reason is None:
            return _bind(cls, entry, name, manager, f"{_backend(cls, name)}.", options)
        skipped.append(f"{_backend(cls, name)} is not used: {reason}")
    cls = wrapper_class(entry.wrapper)
    note = f"{_backend(cls, entry.wrapper)} ({'; '.join(skipped)})." if skipped else None
    return _bind(cls, entry, entry.wrapper, manager, note, options)


def _backend(cls: type[Wrapper], name: str) -> str:
    return getattr(cls, "backend", name)


def _bind(
    cls: type[Wrapper], entry: ModelEntry, name: str, manager: MemoryManager, note: str | None, options: dict[str, Any]
) -> Wrapper:
    wrapper = cls(entry.model_copy(update={"wrapper": name}), manager, **options)
    wrapper.backend_note = note
    if note:
        log.info("%s runs on %s", wrapper.key, note)
    return wrapper

"""Wrapper registry: the `wrapper:` names models.yaml may use, the task each serves, and its class.

Classes are imported only when a catalogue entry needs them, so start-up stays light. A new modality
adds one line here, one wrapper file, one tab file and entries in models.yaml.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from modules.catalog import ModelEntry
from modules.memory import MemoryManager
from modules.wrappers.base import Wrapper

#: wrapper name -> (task, "module:Class")
WRAPPERS: dict[str, tuple[str, str]] = {
    "transformers-chat": ("chat", "modules.wrappers.chat:TransformersChat"),
    "transformers-musicgen": ("music", "modules.wrappers.text_to_music:TransformersMusicgen"),
    "transformers-musicgen-melody": ("music", "modules.wrappers.text_to_music:TransformersMusicgenMelody"),
}


def wrapper_tasks() -> dict[str, str]:
    return {name: task for name, (task, _) in WRAPPERS.items()}


def build_wrapper(entry: ModelEntry, manager: MemoryManager, **options: Any) -> Wrapper:
    module_name, class_name = WRAPPERS[entry.wrapper][1].split(":")
    cls = getattr(import_module(module_name), class_name)
    return cls(entry, manager, **options)

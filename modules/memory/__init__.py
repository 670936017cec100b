"""The shared memory manager: budget, leases, LRU eviction, offloading and OOM recovery.

Nothing in this package knows about modalities or imports gradio.
"""

from modules.memory.budget import Budget, format_bytes, parse_bytes
from modules.memory.errors import DeviceBusy, DeviceOutOfMemory, MemoryManagerError, ModelInUse, ModelTooLarge
from modules.memory.manager import MemoryManager, ModelStatus
from modules.memory.record import Loadable, State

__all__ = [
    "Budget",
    "DeviceBusy",
    "DeviceOutOfMemory",
    "Loadable",
    "MemoryManager",
    "MemoryManagerError",
    "ModelInUse",
    "ModelStatus",
    "ModelTooLarge",
    "State",
    "format_bytes",
    "parse_bytes",
]

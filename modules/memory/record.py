"""What the manager knows about one model: its loader, where it lives, its bytes and its pins."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Loadable(Protocol):
    """The contract between the manager and anything it manages; nothing here is modality-specific.

    The manager owns the loaded object: it calls `load` on first use, keeps the result in its record,
    hands it out inside leases, and drops its only reference on eviction.
    """

    key: str
    #: Whether `move` can carry the loaded object between the device and CPU RAM (offloading).
    can_offload: bool

    def estimate_bytes(self) -> int:
        """Device bytes the weights will take, known before loading (e.g. from file sizes)."""

    def load(self, device: str) -> Any:
        """Build the model object placed on `device`."""

    def measure_bytes(self, model: Any) -> int:
        """Measured footprint of a loaded object: parameter and buffer bytes."""

    def move(self, model: Any, device: str) -> Any:
        """Move a loaded object to `device` ('cpu' for offloading) and return it."""

    def close(self, model: Any) -> None:
        """Release resources torch cannot see (e.g. a native library's context) before dropping."""


class State(str, Enum):
    NOT_LOADED = "not loaded"
    ON_DEVICE = "on device"
    OFFLOADED = "in CPU RAM"


@dataclass(eq=False)
class ModelRecord:
    loader: Loadable
    state: State = State.NOT_LOADED
    model: Any = None
    #: Measured footprint of the weights; 0 until the first load.
    bytes: int = 0
    #: Number of live leases; a pinned model is never evicted.
    pins: int = 0
    #: Working memory declared by the live leases (KV cache, latents, ...).
    working_bytes: int = 0
    #: Room held for a load or re-activation in progress.
    reserved_bytes: int = 0
    last_used: float = 0.0
    last_load_seconds: float | None = None
    #: Loads from the model's files; bringing an offloaded copy back from CPU RAM is not one.
    loads: int = 0
    #: Serialises loads of this one model, so concurrent first uses load it exactly once.
    load_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def key(self) -> str:
        return self.loader.key

    @property
    def device_bytes(self) -> int:
        """Everything this model holds or has claimed on the device right now."""
        weights = self.bytes if self.state is State.ON_DEVICE else 0
        return weights + self.working_bytes + self.reserved_bytes

    @property
    def idle_on_device(self) -> bool:
        return self.pins == 0 and self.state is State.ON_DEVICE

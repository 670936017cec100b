"""Recognising out-of-memory errors and giving memory back to the system."""

from __future__ import annotations

import gc
import sys


def is_out_of_memory(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    # MPS and some native backends report OOM as a plain RuntimeError or MemoryError; torch's CPU
    # allocator says "DefaultCPUAllocator: can't allocate memory".
    text = str(exc)
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def release_memory(device: str, collect: bool = True) -> None:
    """Collect garbage and hand cached allocator blocks back, so freed models really leave the device.

    A full collection costs tens of milliseconds once torch is imported; pass `collect=False` where
    reference counting has already freed what mattered.
    """
    if collect:
        gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.startswith("mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()

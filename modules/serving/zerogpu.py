"""Hugging Face ZeroGPU: run model work under `spaces.GPU`, asking for as long as the request needs.

On a ZeroGPU Space a GPU is attached only while a function decorated with `spaces.GPU` runs, for at
most the `duration` it asked for; asking too little cuts the run, asking too much costs the visitor's
daily GPU quota and their place in ZeroGPU's own queue. The duration is computed per request from its
work (steps, seconds of audio, ...) and the rate the fair queue has measured for that kind of work.

Off ZeroGPU (which sets `SPACES_ZERO_GPU=true`; elsewhere `spaces.GPU` returns the function unchanged),
`spaces` is not even imported, and this changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: Asked for before a kind has been measured: one model load and a short run on a shared GPU.
FIRST_RUN_SECONDS = 120
#: Margin over the measured estimate (loads, a slower prompt, a busier GPU); ZeroGPU's limit is hard.
MARGIN = 1.5
LOAD_SECONDS = 30
MAX_SECONDS = 300


def gpu_seconds(estimate: float | None) -> int:
    """What to ask ZeroGPU for, given the queue's estimate of the run (None: not measured yet)."""
    if estimate is None:
        return FIRST_RUN_SECONDS
    return int(min(MAX_SECONDS, max(10.0, estimate * MARGIN + LOAD_SECONDS)))


def on_gpu(fn: F, duration: Callable[..., int]) -> F:
    """`fn` under `spaces.GPU(duration=...)` on ZeroGPU, else `fn` itself.

    `duration` receives the call's arguments, as `spaces.GPU`'s dynamic durations do.
    """
    if os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("1", "true"):
        return fn
    import spaces  # installed on every ZeroGPU Space
    return spaces.GPU(fn, duration=duration)  # type: ignore[no-any-return]

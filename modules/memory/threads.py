"""Run heavy one-off work in a thread of its own, so native per-thread state ends with it.

OpenMP (used by torch, and by llama.cpp builds that enable it) gives every thread that starts parallel
work its own pool of worker threads, which lives as long as that thread. A server thread that runs
parallel torch work while loading a model (large dtype casts and copies) would keep such an idle pool
for good, and libgomp, seeing more of its threads than cores, then stops spinning at barriers in every
pool of the process. Measured on 2 cores: one such idle pool took an OpenMP llama.cpp from 72 to 59
tokens/s. Work run through `in_fresh_thread` takes its pool with it when it returns.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


def in_fresh_thread(work: Callable[[], R], name: str = "atelier-load") -> R:
    """`work()` in a new thread (with the caller's context); its result is returned, its exception raised."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        error = outcome.pop("error")
        raise error
    return outcome["result"]

"""Requests that arrive together run as one batch: one forward pass, each caller its own result.

The device's fair queue lets requests that can share a pass onto the device together (same model and
settings). Each still runs its own handler in its own thread, through its own lease, checks and
progress; when they reach the model, `Gather` collects them: the first to arrive waits for the others
that are in flight with the same key, runs the batch once, and hands every caller its own row. A request
that is alone runs at once, without waiting.

The others may not be in flight yet when the first arrives: they were let onto the device at the same
moment, but their threads can start later. The serving layer says how many were let in together
(`let_in_together`), and the first then also waits, up to `GRACE_SECONDS`, for that many to arrive.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

I = TypeVar("I")
R = TypeVar("R")

#: Most requests in one pass (their activations add up; the memory manager is told each one's share).
MAX_BATCH = 8
#: Longest the first arrival waits for the others (they may be waiting for the model to load).
PATIENCE_SECONDS = 30.0
#: Longest the first arrival waits for companions that have not announced themselves yet (one that
#: failed its checks never will).
GRACE_SECONDS = 1.0
#: How many requests the device's queue let in together with this call, itself included.
let_in_together: ContextVar[int] = ContextVar("let_in_together", default=1)


class Share(Protocol):
    """What every caller's share of a batch carries: its progress callback and its Stop."""

    report: Callable[[int, int], None]
    stop: threading.Event


def report_to_all(shares: list[Share]) -> Callable[[int, int], None]:
    """A progress callback for the pass: every caller sees every step."""

    def report(step: int, total: int) -> None:
        for share in shares:
            share.report(step, total)

    return report


def all_stopped(shares: list[Share]) -> Callable[[], bool]:
    """Whether the pass may end early: only when every caller has stopped (the others still want it)."""
    return lambda: all(share.stop.is_set() for share in shares)


@dataclass
class _Batch(Generic[I, R]):
    items: list[I] = field(default_factory=list)
    results: list[R] | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Gather(Generic[I, R]):
    """`run(items) -> results` (one result per item, in order) for items submitted together; each caller
    gets its result and how many items shared the pass."""

    def __init__(self, run: Callable[[list[I]], list[R]], limit: int = MAX_BATCH, patience: float = PATIENCE_SECONDS) -> None:
        self._run = run
        self._limit = limit
        self._patience = patience
        self._flying: defaultdict[Hashable, int] = defaultdict(int)  # key -> calls in flight not yet submitted
        self._open: dict[Hashable, _Batch[I, R]] = {}
        self._changed = threading.Condition()

    @contextmanager
    def in_flight(self, key: Hashable) -> Iterator[Callable[[I], tuple[R, int]]]:
        """Announce a call that will submit an item under `key` (so a batch waits for it); yields `submit`.
        Leaving the block without submitting (a bad input, a failed load) withdraws the announcement."""
        submitted = False

        def submit(item: I) -> tuple[R, int]:
            nonlocal submitted
            submitted = True
            return self._submit(key, item)

        with self._changed:
            self._flying[key] += 1
        try:
            yield submit
        finally:
            if not submitted:
                self._arrived(key)

    def _arrived(self, key: Hashable) -> None:
        with self._changed:
            self._flying[key] -= 1
            if not self._flying[key]:
                del self._flying[key]
            self._changed.notify_all()

    def _submit(self, key: Hashable, item: I) -> tuple[R, int]:
        with self._changed:
            batch = self._open.get(key)
            leader = batch is None or len(batch.items) >= self._limit
            if leader:
                batch = self._open[key] = _Batch()
            index = len(batch.items)
            batch.items.append(item)
        self._arrived(key)
        if leader:
            expected = min(let_in_together.get(), self._limit)
            grace_ends = time.monotonic() + GRACE_SECONDS

            def ready() -> bool:
                if len(batch.items) >= self._limit:
                    return True
                awaited = len(batch.items) < expected and time.monotonic() < grace_ends
                return not self._flying.get(key) and not awaited

            with self._changed:
                deadline = time.monotonic() + self._patience
                while not ready() and time.monotonic() < deadline:
                    self._changed.wait(0.05)  # wakes on arrivals; the timeout ends the grace
                if self._open.get(key) is batch:
                    del self._open[key]
            try:
                batch.results = self._run(batch.items)
            except BaseException as exc:  # every caller of the batch gets the failure
                batch.error = exc
            finally:
                batch.done.set()
        else:
            batch.done.wait()
        if batch.error is not None:
            raise batch.error
        assert batch.results is not None
        return batch.results[index], len(batch.items)

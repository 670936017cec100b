"""Running the wrappers' blocking generators from the event loop: one at a time, and stoppable.

The page's requests wait in Gradio's queue, which is internal to Gradio. The API's requests wait here,
in a queue of their own for the device (one run at a time, in arrival order). Both go through the one
memory manager, whose leases keep each model in place while it serves; the two queues are not yet
one fair queue (issue 11), so a page request and an API request may run side by side.

A stream notices a client that leaves and stops its run; a non-streaming request runs to its end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import anyio
from anyio.to_thread import run_sync
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from modules.api.errors import APIError

T = TypeVar("T")
_DONE = object()


class DeviceQueue:
    """One API run on the device at a time; `max_waiting` more may wait, the rest are refused."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self.waiting = 0
        self._slot = anyio.Semaphore(1)  # not a Lock: a stream's slot is released by the response's task

    async def acquire(self) -> None:
        if self._slot.value == 0 and self.waiting >= self.max_waiting:
            raise APIError(429, f"The queue is full ({self.waiting} requests waiting); try again shortly.",
                           code="queue_full")
        self.waiting += 1
        try:
            await self._slot.acquire()
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._slot.release()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold the device for the block."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()


class BlockingRun(Generic[T]):
    """A wrapper's generator advanced one item at a time in a worker thread, never on the event loop.

    Closing it (from any task, even a cancelled one) closes the generator in a thread; for a wrapper
    that stops generation and ends the memory manager's lease before `close` returns.
    """

    def __init__(self, items: Iterator[T]) -> None:
        self._items = items
        self.closed = False

    async def next(self) -> T | None:
        """The next item, or None when the generator is exhausted."""
        item = await run_sync(next, self._items, _DONE)
        return None if item is _DONE else item  # type: ignore[return-value]

    async def last(self) -> T | None:
        """Run to the end in one thread and return the last item."""

        def drain() -> T | None:
            final = None
            for final in self._items:
                pass
            return final

        return await run_sync(drain)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            await run_sync(self._items.close)


class EventStream(StreamingResponse):
    """Server-sent events whose `on_close` runs however the response ends: finished, failed, or the
    client gone (Starlette then cancels the body, possibly before it started)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
                await self._on_close()

"""Running the wrappers' blocking generators from the event loop: in the device's turn, and stoppable.

The API's requests wait in the same fair queue as the page's and the Gradio API's (modules/serving/),
each charged to its client: the API key when one was sent, else the caller's address.

A stream notices a client that leaves and stops its run; a non-streaming request runs to its end.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

import anyio
from anyio.to_thread import run_sync
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from modules.api.errors import APIError
from modules.serving import OverQuota, QueueFull, Serving, Ticket

T = TypeVar("T")
_DONE = object()
#: How long one wait for the turn blocks a worker thread; a cancelled request leaves the queue after it.
WAIT_SLICE_SECONDS = 0.5


def api_client(serving: Serving, request: Request) -> str:
    """The client an API request is charged to: its key (hashed: keys are secrets), else its address."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]
    return serving.client(request)


class DeviceTurn:
    """One API request's turn on the device, from the shared fair queue."""

    def __init__(self, serving: Serving, client: str, kind: str) -> None:
        self.serving, self.client, self.kind = serving, client, kind
        self.ticket: Ticket | None = None

    async def acquire(self) -> None:
        """Wait for the turn; a 429 (with the exact wait for a quota) when the request cannot wait."""
        queue = self.serving.queue
        try:
            self.ticket = queue.join(self.client, self.kind)
            while not await run_sync(queue.wait, self.ticket, WAIT_SLICE_SECONDS):
                pass
        except QueueFull as exc:
            self.release()
            raise APIError(429, str(exc), code="queue_full") from None
        except OverQuota as exc:
            self.release()
            raise APIError(429, str(exc), code="quota_exceeded", retry_after=exc.retry_after) from None
        except BaseException:  # cancelled while waiting: give the place up
            self.release()
            raise

    def release(self) -> None:
        if self.ticket is not None:
            self.serving.queue.leave(self.ticket)

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
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

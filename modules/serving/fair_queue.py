"""One fair queue per device: every request that runs a model waits here for its turn.

Gradio's queue is first come, first served, per event. Here each *client* (a logged-in user, or a
visitor's address; see clients.py) has a line of its own, and the device goes to the client that was
served least recently (InvokeAI's multi-user queue works the same way). A client with ten waiting
requests therefore delays a client with one by at most one request, whatever the order they came in.

Requests that can share one forward pass (the same `batch_key`: same model and settings) go onto the
device together when the first of them gets its turn, as one run: one request from each client that
has nothing else waiting, and each rider's client counts as served.

Each request says what `kind` of work it is and how much (`work`: steps, seconds of audio, ...). The
queue learns each kind's seconds per unit of work from the runs it has seen, which gives every waiting
request an estimated wait, and a ZeroGPU duration (zerogpu.py) computed from the request itself.

The queue knows nothing about models or tabs: a ticket is a client, a kind and an amount of work.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from modules.serving.quota import OverQuota, Quota, Usage

#: How much each new run moves a kind's learned rate (an exponential moving average).
RATE_SMOOTHING = 0.3


class QueueFull(Exception):
    pass


@dataclass(eq=False)
class Ticket:
    client: str
    kind: str
    work: float
    number: int
    batch_key: Hashable | None = None
    group: int = -1  # the number of the ticket whose turn this one runs in (its own, or a batch's first)
    granted_at: float | None = None
    refused: Exception | None = None  # set when the client went over quota while it waited
    done: bool = False


@dataclass(frozen=True)
class Place:
    """Where a waiting ticket stands: requests before it (the running ones included) and the wait."""

    ahead: int
    wait_seconds: float | None  # None until every kind ahead has been seen running once

    def describe(self) -> str:
        wait = f"about {math.ceil(self.wait_seconds)} s" if self.wait_seconds is not None else "wait not known yet"
        return f"Waiting for the device: {self.ahead} request{'s' if self.ahead != 1 else ''} before yours, {wait}"


@dataclass(frozen=True)
class QueueState:
    running: int
    waiting: int
    clients_waiting: int


@dataclass
class _Line:
    """One client's waiting tickets, oldest first, and when it last got the device."""

    tickets: deque[Ticket] = field(default_factory=deque)
    last_served: float = -math.inf


class FairQueue:
    """`slots` requests run at once (one per device by default); `max_waiting` more may wait."""

    def __init__(
        self,
        slots: int = 1,
        max_waiting: int = 64,
        quota: Quota | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_batch: int = 8,
    ) -> None:
        self.slots = slots
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.quota = quota or Quota()
        self._clock = clock
        self._lines: OrderedDict[str, _Line] = OrderedDict()
        self._running: list[Ticket] = []
        self._rates: dict[str, float] = {}  # kind -> seconds per unit of work
        self._numbers = itertools.count()
        self._changed = threading.Condition()

    # -- a request's life: join, wait for the turn, leave ------------------------------------------------

    def join(self, client: str, kind: str, work: float = 1.0, batch_key: Hashable | None = None) -> Ticket:
        """Take a ticket; QueueFull or OverQuota (with the exact wait) when the request cannot wait.
        Requests with the same (non-None) `batch_key` may run together in one turn."""
        with self._changed:
            self.quota.check(client, self._clock())
            if self._waiting_count() >= self.max_waiting:
                raise QueueFull(f"The queue is full ({self.max_waiting} requests waiting); try again shortly.")
            ticket = Ticket(client, kind, max(work, 1e-9), next(self._numbers), batch_key)
            self._lines.setdefault(client, _Line()).tickets.append(ticket)
            self._dispatch()
            return ticket

    def wait(self, ticket: Ticket, timeout: float | None = None) -> bool:
        """True once the ticket holds the device; False if `timeout` passed first. Raises OverQuota if the
        client went over its quota while this ticket waited."""
        with self._changed:
            self._changed.wait_for(lambda: ticket.granted_at is not None or ticket.refused is not None, timeout)
            if ticket.refused is not None:
                raise ticket.refused
            return ticket.granted_at is not None

    def leave(self, ticket: Ticket) -> None:
        """The request is over (finished, failed, stopped, or its client gone): free its place or slot,
        charge its client and learn from its duration. Safe to call twice."""
        with self._changed:
            if ticket.done:
                return
            ticket.done = True
            if ticket in self._running:
                self._running.remove(ticket)
                now = self._clock()
                seconds = now - ticket.granted_at  # type: ignore[operator]
                self.quota.charge(ticket.client, seconds, now)
                self._learn(ticket.kind, seconds / ticket.work)
            else:
                line = self._lines.get(ticket.client)
                if line is not None and ticket in line.tickets:
                    line.tickets.remove(ticket)
            self._dispatch()

    @contextmanager
    def turn(self, client: str, kind: str, work: float = 1.0) -> Iterator[Ticket]:
        """Hold the device for the block (waiting without progress reports)."""
        ticket = self.join(client, kind, work)
        try:
            self.wait(ticket)
            yield ticket
        finally:
            self.leave(ticket)

    # -- what the page shows ------------------------------------------------------------------------------

    def place(self, ticket: Ticket) -> Place:
        """The ticket's place if the queue were served from now on with no newcomers."""
        with self._changed:
            now = self._clock()
            ahead = list(self._running)
            lines = {client: _Line(deque(line.tickets), line.last_served) for client, line in self._lines.items()}
            while True:
                client = self._next_client(lines)
                if client is None:
                    break
                nxt = lines[client].tickets.popleft()
                if nxt is ticket:
                    break
                lines[client].last_served = now + len(ahead)  # served in turn: to the back of the rotation
                ahead.append(nxt)
            waits = [self.estimate(t.kind, t.work) for t in ahead]
            if any(wait is None for wait in waits):
                return Place(len(ahead), None)
            elapsed = sum(now - t.granted_at for t in ahead if t.granted_at is not None)
            # With several slots the work ahead is shared between them.
            return Place(len(ahead), max(0.0, sum(waits) - elapsed) / self.slots)  # type: ignore[arg-type]

    def estimate(self, kind: str, work: float) -> float | None:
        """Seconds a request of `kind` with `work` units should take, from the runs seen so far."""
        with self._changed:
            rate = self._rates.get(kind)
        return None if rate is None else rate * work

    def state(self) -> QueueState:
        with self._changed:
            busy = [line for line in self._lines.values() if line.tickets]
            return QueueState(len(self._running), sum(len(line.tickets) for line in busy), len(busy))

    def usage(self, client: str) -> Usage:
        return self.quota.usage(client, self._clock())

    # -- inside ---------------------------------------------------------------------------------------------

    def _waiting_count(self) -> int:
        return sum(len(line.tickets) for line in self._lines.values())

    def granted_with(self, ticket: Ticket) -> int:
        """How many requests were let onto the device in `ticket`'s turn, itself included (a batch's size)."""
        with self._changed:
            return sum(other.group == ticket.group for other in self._running) or 1

    @staticmethod
    def _next_client(lines: Mapping[str, _Line]) -> str | None:
        """The client with a waiting ticket that was served least recently (ties: the oldest ticket)."""
        waiting = [(line.last_served, line.tickets[0].number, client) for client, line in lines.items() if line.tickets]
        return min(waiting)[2] if waiting else None

    def _dispatch(self) -> None:
        """Give free slots to the next clients in the rotation (called with the lock held)."""
        while len({ticket.group for ticket in self._running}) < self.slots:
            client = self._next_client(self._lines)
            if client is None:
                break
            ticket = self._lines[client].tickets.popleft()
            if self._grant(ticket, ticket.number) and ticket.batch_key is not None:
                self._grant_riders(ticket)
        for client in [client for client, line in self._lines.items() if not line.tickets and line.last_served == -math.inf]:
            del self._lines[client]  # never served and nothing waiting: nothing to remember
        self._changed.notify_all()

    def _grant(self, ticket: Ticket, group: int) -> bool:
        now = self._clock()
        try:
            self.quota.check(ticket.client, now)
        except OverQuota as refusal:  # went over while waiting: its later tickets will be refused too
            ticket.refused = refusal
            return False
        ticket.granted_at = self._lines[ticket.client].last_served = now
        ticket.group = group
        self._running.append(ticket)
        return True

    def _grant_riders(self, first: Ticket) -> None:
        """Waiting tickets of other clients that can share `first`'s pass run in its turn, oldest first, up
        to max_batch: from each client that has only that one request waiting. So a room asking the same
        thing at once shares one pass, while a flood of identical requests neither takes more than one
        turn at a time nor rides along on everyone else's turn (which would slow their pass)."""
        oldest: dict[str, Ticket] = {}
        for client, line in self._lines.items():
            if client != first.client and len(line.tickets) == 1 and line.tickets[0].batch_key == first.batch_key:
                oldest[client] = line.tickets[0]
        riders = sorted(oldest.values(), key=lambda t: t.number)[: self.max_batch - 1]
        for rider in riders:
            self._lines[rider.client].tickets.remove(rider)
            self._grant(rider, first.number)

    def _learn(self, kind: str, seconds_per_unit: float) -> None:
        old = self._rates.get(kind)
        self._rates[kind] = seconds_per_unit if old is None else old + RATE_SMOOTHING * (seconds_per_unit - old)

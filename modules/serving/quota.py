"""Quotas: how many device-seconds each client may use in a sliding time window.

A client's runs are charged when they end (the seconds it held the device). A request is refused while
the client's charge over the last `window` seconds is at or above `seconds`; the refusal says exactly
when enough of that charge will have aged out of the window.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict, deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    """One client's standing: device-seconds used in the window, the limit, and when it may run again."""

    used: float
    limit: float | None  # None: no quota
    window: float
    retry_after: float | None  # seconds until it may run again; None when it may run now

    def describe(self) -> str:
        if self.limit is None:
            return f"{self.used:.1f} device-seconds used (no quota)"
        line = f"{self.used:.1f} of {self.limit:g} device-seconds used in the last {self.window / 60:g} min"
        if self.retry_after is not None:
            line += f"; over quota, try again in {math.ceil(self.retry_after)} s"
        return line


class OverQuota(Exception):
    def __init__(self, client: str, usage: Usage) -> None:
        assert usage.retry_after is not None
        self.retry_after = math.ceil(usage.retry_after)
        super().__init__(
            f"Over your quota of {usage.limit:g} device-seconds per {usage.window / 60:g} min "
            f"({usage.used:.1f} s used); try again in {self.retry_after} s."
        )


class Quota:
    """`seconds` of device time per client per `window` seconds; `seconds=None` charges but never refuses."""

    def __init__(self, seconds: float | None = None, window: float = 3600.0) -> None:
        if seconds is not None and seconds <= 0:
            raise ValueError(f"a quota must be positive seconds, not {seconds}")
        if window <= 0:
            raise ValueError(f"a quota window must be positive seconds, not {window}")
        self.seconds = seconds
        self.window = window
        self._charges: dict[str, deque[tuple[float, float]]] = defaultdict(deque)  # client -> (ended at, seconds)
        self._lock = threading.Lock()

    def charge(self, client: str, seconds: float, ended_at: float) -> None:
        with self._lock:
            self._charges[client].append((ended_at, seconds))

    def usage(self, client: str, now: float) -> Usage:
        with self._lock:
            charges = self._charges.get(client, deque())
            while charges and charges[0][0] <= now - self.window:  # aged out
                charges.popleft()
            used = sum(seconds for _, seconds in charges)
            return Usage(used, self.seconds, self.window, self._retry_after(charges, used, now))

    def check(self, client: str, now: float) -> None:
        """Raise OverQuota, with the exact wait, when `client` may not start a run now."""
        usage = self.usage(client, now)
        if usage.retry_after is not None:
            raise OverQuota(client, usage)

    def _retry_after(self, charges: deque[tuple[float, float]], used: float, now: float) -> float | None:
        if self.seconds is None or used < self.seconds:
            return None
        for ended_at, seconds in charges:  # oldest first: the first whose ageing-out brings usage under
            used -= seconds
            if used < self.seconds:
                return ended_at + self.window - now
        raise AssertionError("unreachable: all charges aged out leaves 0 used")

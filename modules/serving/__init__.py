"""Serving a room: one fair queue per device, quotas, who a client is, and ZeroGPU."""

from __future__ import annotations

from dataclasses import dataclass

from modules.serving.clients import RequestLike, client_id
from modules.serving.fair_queue import FairQueue, Place, QueueFull, QueueState, Ticket
from modules.serving.quota import OverQuota, Quota, Usage


@dataclass(frozen=True)
class Serving:
    """What every device event shares: the device's fair queue, and how to tell who a request is from."""

    queue: FairQueue
    trust_forwarded: bool = False  # --share / a Space: the visitor's address is in X-Forwarded-For

    def client(self, request: RequestLike | None) -> str:
        return client_id(request, self.trust_forwarded, getattr(request, "username", None))


__all__ = ["FairQueue", "OverQuota", "Place", "Quota", "QueueFull", "QueueState", "Serving", "Ticket", "Usage"]

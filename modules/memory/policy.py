"""Which idle models to evict to make room: least recently used first."""

from __future__ import annotations

from collections.abc import Iterable

from modules.memory.record import ModelRecord


def lru_victims(records: Iterable[ModelRecord], bytes_needed: int) -> list[ModelRecord] | None:
    """The fewest idle on-device models, oldest first, that free `bytes_needed`; None if they can't."""
    idle = sorted((r for r in records if r.idle_on_device), key=lambda r: r.last_used)
    chosen: list[ModelRecord] = []
    freed = 0
    for record in idle:
        if freed >= bytes_needed:
            break
        chosen.append(record)
        freed += record.bytes
    return chosen if freed >= bytes_needed else None

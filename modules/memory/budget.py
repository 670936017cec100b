"""How many device bytes the manager may fill, and how much host RAM may hold offloaded copies."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import psutil

GIB = 1024**3
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": GIB, "t": 1024**4}


def parse_bytes(text: str | int) -> int:
    """'8GB', '512MiB', '6g' or a plain number of bytes -> bytes (binary units, as GPUs report)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise ValueError(f"not a size: {text!r} (try e.g. 8GB or 512MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def is_accelerator(device: str) -> bool:
    return device.split(":")[0] in ("cuda", "mps", "xpu")


@dataclass(frozen=True)
class Budget:
    """The device budget, and the host-RAM room for offloaded copies.

    On CUDA the budget follows the driver: free memory plus what this process already holds, minus a
    reserve for other processes and fragmentation. On CPU it is a fixed share of the machine's RAM, since
    the process's own heap makes "free RAM" too noisy to follow. An explicit `override` wins on either.
    """

    device: str
    override: int | None = None
    device_reserve: int = GIB // 2
    host_reserve: int = 2 * GIB
    cpu_share: float = 0.7

    def limit(self) -> int:
        if self.override is not None:
            return self.override
        if self.device.startswith("cuda"):
            torch = sys.modules["torch"]  # a CUDA device was resolved, so torch is imported
            free, _total = torch.cuda.mem_get_info(self.device)
            held = torch.cuda.memory_reserved(self.device)
            return max(0, free + held - self.device_reserve)
        return int(psutil.virtual_memory().total * self.cpu_share)

    def host_room(self) -> int:
        """Bytes of host RAM still usable for offloaded copies."""
        return max(0, psutil.virtual_memory().available - self.host_reserve)

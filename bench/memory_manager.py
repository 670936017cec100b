"""Overhead of a lease on a model that is already loaded: what every request pays the memory manager.

    python bench/memory_manager.py [--leases 10000] [--models 8]

Prints microseconds per lease (`use` entered and left, and `run`), with a few idle models registered
beside it, against an empty `with` block as the floor.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from modules.memory import Budget, MemoryManager  # noqa: E402


class Linear:
    """A Loadable of one small float32 linear layer."""

    can_offload = False

    def __init__(self, key: str) -> None:
        self.key = key

    def estimate_bytes(self) -> int:
        return 64 * 4

    def load(self, device: str) -> nn.Module:
        return nn.Linear(64, 1, bias=False)

    def measure_bytes(self, model: nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in model.parameters())

    def move(self, model: nn.Module, device: str) -> nn.Module:
        return model

    def close(self, model: nn.Module) -> None:
        pass


def per_lease_us(lease, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        with lease():
            pass
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--models", type=int, default=8, help="models registered and loaded")
    args = parser.parse_args()

    manager = MemoryManager("cpu", budget=Budget("cpu", override=2**30))
    models = [Linear(f"m{i}") for i in range(args.models)]
    for model in models:
        manager.register(model)
        manager.run(model, lambda m: None)
    hot = models[0]

    floor = per_lease_us(nullcontext, args.leases)
    use = per_lease_us(lambda: manager.use(hot, working_bytes=1024), args.leases)
    started = time.perf_counter()
    for _ in range(args.leases):
        manager.run(hot, lambda m: None, working_bytes=1024)
    run = (time.perf_counter() - started) / args.leases * 1e6
    print(f"{args.leases} leases of a loaded model, {args.models} models registered")
    print(f"  empty with-block  {floor:8.2f} us")
    print(f"  manager.use       {use:8.2f} us per lease")
    print(f"  manager.run       {run:8.2f} us per lease")


if __name__ == "__main__":
    main()

"""The shared memory manager, driven with real torch modules of known byte sizes.

The models are float32 `nn.Linear(n, 1, bias=False)` layers, so a model of `n * 4` bytes measures exactly
that. Sizes are in KiB to keep every test small and fast on CPU. Accelerator behaviour (offloading) is
exercised with `device="cuda"` and an explicit budget: the manager then never calls into CUDA, and the
test model records where it was asked to go while its tensors stay on CPU.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from modules.memory import (
    Budget,
    DeviceBusy,
    DeviceOutOfMemory,
    MemoryManager,
    ModelInUse,
    ModelTooLarge,
    State,
)

KIB = 1024


class LinearModel:
    """A real Loadable: a float32 linear layer of `size` bytes (the test's model, not a mock of ours)."""

    can_offload = True

    def __init__(
        self,
        key: str,
        size: int,
        estimate: int | None = None,
        load_seconds: float = 0.0,
        load_barrier: threading.Barrier | None = None,
    ) -> None:
        assert size % 4 == 0
        self.key = key
        self.size = size
        self.estimate = size if estimate is None else estimate
        self.load_seconds = load_seconds
        #: Loads meet here (or time out), to line concurrent loads up.
        self.load_barrier = load_barrier
        self.load_calls = 0
        self.moves: list[str] = []
        #: Whether a copy sits in host RAM (moved to 'cpu' and not yet closed or moved back).
        self.on_host = False
        #: Exceptions the next `load` / `move` calls raise, in order.
        self.load_failures: list[BaseException] = []
        self.move_failures: list[BaseException] = []
        self._lock = threading.Lock()

    def estimate_bytes(self) -> int:
        return self.estimate

    def load(self, device: str) -> nn.Module:
        with self._lock:
            self.load_calls += 1
            failure = self.load_failures.pop(0) if self.load_failures else None
        if failure is not None:
            raise failure
        if self.load_seconds:
            time.sleep(self.load_seconds)  # a slow load widens the window for concurrent first uses
        if self.load_barrier is not None:
            try:
                self.load_barrier.wait(timeout=0.5)
            except threading.BrokenBarrierError:
                pass
        model = nn.Linear(self.size // 4, 1, bias=False)
        model.placed_on = device  # the tensors stay on CPU; where the manager asked for is recorded
        return model

    def measure_bytes(self, model: nn.Module) -> int:
        tensors = [*model.parameters(), *model.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def move(self, model: nn.Module, device: str) -> nn.Module:
        self.moves.append(device)
        if self.move_failures:
            model.placed_on = "half-way"
            raise self.move_failures.pop(0)
        model.placed_on = device
        self.on_host = device == "cpu"
        return model

    def close(self, model: nn.Module) -> None:
        self.on_host = False


@dataclass(frozen=True)
class SmallHost(Budget):
    """A host with `ram` bytes of RAM, in which offloaded copies take room, as psutil sees it."""

    ram: int = 0
    models: tuple[LinearModel, ...] = ()

    def host_room(self) -> int:
        return self.ram - sum(model.size for model in self.models if model.on_host)


def manager(budget: int, *models: LinearModel, device: str = "cpu", **kwargs) -> MemoryManager:
    cuda = device.startswith("cuda")
    mm = MemoryManager(
        device,
        budget=Budget(device, override=budget, host_reserve=kwargs.pop("host_reserve", 0 if cuda else 2**30)),
        wait_seconds=kwargs.pop("wait_seconds", 5.0),
        **kwargs,
    )
    for model in models:
        mm.register(model)
    return mm


def state(mm: MemoryManager, key: str) -> State:
    return next(s.state for s in mm.status() if s.key == key)


def load(mm: MemoryManager, *models: LinearModel) -> None:
    """Lease each model once, in order (so the first is the least recently used)."""
    for model in models:
        with mm.use(model):
            pass


def assert_accounting_consistent(mm: MemoryManager) -> None:
    status = mm.status()
    assert all(s.pins == 0 for s in status), status
    assert mm.used_bytes() == sum(s.bytes for s in status if s.state is State.ON_DEVICE), status


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


# ------------------------------------------------------------------------------------------------------
# Budget


def test_random_leases_never_exceed_the_budget():
    """A long seeded sequence of (sometimes nested) leases: resident bytes stay within the budget, and
    a request fails exactly when it cannot fit, with the error that says why."""
    rng = random.Random(1234)
    budget = 160 * KIB
    models = [LinearModel(f"m{i}", size * KIB) for i, size in enumerate([8, 16, 24, 40, 64, 96, 120])]
    mm = manager(budget, *models, wait_seconds=0.0)
    outcomes = {"ok": 0, "busy": 0, "too large": 0}

    def lease(model: LinearModel, working: int, held: int, inner: Callable[[int], None] | None) -> None:
        """Lease `model` with `working` bytes while `held` bytes stay pinned by enclosing leases."""
        if model.size + working > budget:
            with pytest.raises(ModelTooLarge):
                with mm.use(model, working):
                    pass
            outcomes["too large"] += 1
            return
        if held + model.size + working > budget:
            with pytest.raises(DeviceBusy):
                with mm.use(model, working):
                    pass
            outcomes["busy"] += 1
            return
        with mm.use(model, working) as module:
            assert module.weight.numel() * 4 == model.size
            assert state(mm, model.key) is State.ON_DEVICE
            assert mm.used_bytes() <= budget
            outcomes["ok"] += 1
            if inner is not None:
                inner(held + model.size + working)
        assert mm.used_bytes() <= budget

    for _ in range(400):
        outer = rng.choice(models)
        outer_working = rng.choice([0, 0, 4, 16, 48]) * KIB
        inner = None
        if rng.random() < 0.3:
            other = rng.choice([m for m in models if m is not outer])
            other_working = rng.choice([0, 4, 16]) * KIB
            inner = lambda held, other=other, w=other_working: lease(other, w, held, None)  # noqa: E731
        lease(outer, outer_working, 0, inner)
        assert mm.used_bytes() <= budget
    assert_accounting_consistent(mm)
    assert min(outcomes.values()) > 0, outcomes  # every branch was exercised


def test_lease_of_a_model_in_use_waits_for_its_own_working_memory_rather_than_calling_it_too_large():
    """Room held by another lease of the same model is busy, not "too large": it comes back."""
    model = LinearModel("m", 40 * KIB)
    mm = manager(100 * KIB, model, wait_seconds=0.0)
    with mm.use(model, 40 * KIB):
        with pytest.raises(DeviceBusy):
            with mm.use(model, 40 * KIB):
                pass
    with mm.use(model, 40 * KIB):  # alone it fits
        pass


def test_model_too_large_names_the_model_and_sizes_and_evicts_nothing():
    small, big = LinearModel("small", 16 * KIB), LinearModel("big", 64 * KIB)
    mm = manager(60 * KIB, small, big)
    load(mm, small)
    with pytest.raises(ModelTooLarge) as info:
        with mm.use(big):
            pass
    assert "big" in str(info.value) and "64.00 KiB" in str(info.value) and "60.00 KiB" in str(info.value)
    assert state(mm, "small") is State.ON_DEVICE  # evicting it could not have helped

    with pytest.raises(ModelTooLarge) as info:
        with mm.use(small, working_bytes=48 * KIB):
            pass
    assert "small" in str(info.value) and "64.00 KiB" in str(info.value)
    assert_accounting_consistent(mm)


def test_low_estimate_is_corrected_by_evicting_others_after_the_load():
    other = LinearModel("other", 64 * KIB)
    model = LinearModel("model", 48 * KIB, estimate=8 * KIB)
    mm = manager(100 * KIB, other, model)
    load(mm, other)
    with mm.use(model):
        assert mm.used_bytes() == 48 * KIB <= 100 * KIB
        assert state(mm, "other") is State.NOT_LOADED
    assert next(s.bytes for s in mm.status() if s.key == "model") == 48 * KIB
    assert_accounting_consistent(mm)


def test_low_estimate_of_a_model_bigger_than_the_budget_drops_it_again():
    model = LinearModel("model", 128 * KIB, estimate=8 * KIB)
    mm = manager(100 * KIB, model)
    with pytest.raises(ModelTooLarge, match="model"):
        with mm.use(model):
            pass
    assert state(mm, "model") is State.NOT_LOADED
    assert mm.used_bytes() == 0
    # The measured size is remembered: the next request fails before loading anything.
    with pytest.raises(ModelTooLarge):
        with mm.use(model):
            pass
    assert model.load_calls == 1


# ------------------------------------------------------------------------------------------------------
# Eviction order and pins


def test_eviction_follows_least_recent_use():
    a, b, c, d, e = (LinearModel(k, 32 * KIB) for k in "abcde")
    mm = manager(96 * KIB, a, b, c, d, e)
    load(mm, a, b, c)
    load(mm, a)  # a is now the most recent; b the least
    load(mm, d)
    assert {k for k in "abcde" if state(mm, k) is State.ON_DEVICE} == {"a", "c", "d"}
    load(mm, e)  # c is now the least recent
    assert state(mm, "c") is State.NOT_LOADED
    assert {k for k in "abcde" if state(mm, k) is State.ON_DEVICE} == {"a", "d", "e"}
    with mm.use(b, working_bytes=32 * KIB):  # needs two slots: the two least recent go (a, then d)
        assert {k for k in "abcde" if state(mm, k) is State.ON_DEVICE} == {"b", "e"}


def test_a_model_in_use_is_never_evicted():
    pinned, idle, newcomer, big = (
        LinearModel("pinned", 60 * KIB),
        LinearModel("idle", 30 * KIB),
        LinearModel("newcomer", 30 * KIB),
        LinearModel("big", 50 * KIB),
    )
    mm = manager(100 * KIB, pinned, idle, newcomer, big, wait_seconds=0.2)
    load(mm, idle)
    leased, release = threading.Event(), threading.Event()

    def hold() -> None:
        with mm.use(pinned):
            leased.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert leased.wait(5)
        load(mm, newcomer)  # evicts the idle model, not the older pinned one
        assert state(mm, "idle") is State.NOT_LOADED
        assert state(mm, "pinned") is State.ON_DEVICE

        started = time.monotonic()
        with pytest.raises(DeviceBusy):  # the pinned model holds the room: wait, then give up
            with mm.use(big):
                pass
        assert time.monotonic() - started >= 0.2
        assert state(mm, "pinned") is State.ON_DEVICE
        with pytest.raises(ModelInUse):
            mm.unload("pinned")
        assert state(mm, "pinned") is State.ON_DEVICE

        # A patient request gets the room as soon as the lease ends.
        mm.wait_seconds = 10.0
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (load(mm, big), done.set()))
        waiter.start()
        assert not done.wait(0.2)  # still waiting while the model is pinned
        assert state(mm, "pinned") is State.ON_DEVICE
        release.set()
        assert done.wait(5)
        waiter.join()
    finally:
        release.set()
        holder.join()
    assert state(mm, "big") is State.ON_DEVICE
    assert_accounting_consistent(mm)


def test_unload_of_a_model_in_use_is_refused():
    model = LinearModel("model", 16 * KIB)
    mm = manager(100 * KIB, model)
    with mm.use(model):
        with pytest.raises(ModelInUse, match="model"):
            mm.unload("model")
        assert state(mm, "model") is State.ON_DEVICE
    mm.unload("model")
    assert state(mm, "model") is State.NOT_LOADED and mm.used_bytes() == 0


# ------------------------------------------------------------------------------------------------------
# Concurrency


def test_concurrent_first_uses_of_one_model_load_it_once():
    model = LinearModel("model", 16 * KIB, load_seconds=0.05)
    mm = manager(100 * KIB, model)
    barrier = threading.Barrier(8)
    seen: list[int] = []

    def first_use() -> None:
        barrier.wait()
        with mm.use(model, working_bytes=KIB) as module:
            seen.append(id(module))

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert model.load_calls == 1
    assert len(seen) == 8 and len(set(seen)) == 1
    assert next(s.loads for s in mm.status() if s.key == "model") == 1
    assert_accounting_consistent(mm)


def test_concurrent_leases_of_different_models_keep_the_accounting_right():
    """Threads lease random models at once: the budget holds in every lease, and afterwards the used
    bytes equal the models on the device, with no pin left behind."""
    budget = 128 * KIB
    sizes = [8, 16, 24, 32, 40, 48]
    models = [LinearModel(f"m{i}", size * KIB, load_seconds=0.002) for i, size in enumerate(sizes)]
    mm = manager(budget, *models, wait_seconds=10.0)
    over_budget: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        try:
            for _ in range(40):
                model = rng.choice(models)
                with mm.use(model, working_bytes=rng.choice([0, 4, 8]) * KIB) as module:
                    used = mm.used_bytes()
                    if used > budget:
                        over_budget.append(used)
                    module(torch.ones(1, model.size // 4))
                del module  # no reference outlives the lease, as in a wrapper
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, to give races a chance
    try:
        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors
    assert not over_budget, over_budget
    assert_accounting_consistent(mm)
    assert sum(m.load_calls for m in models) > len(models)  # evictions happened


def test_first_uses_that_fit_only_one_at_a_time_take_turns():
    """Two loads whose weights fit together but whose working memory does not: neither may pin its
    model and then wait for room the other holds (both would time out); they take turns."""
    meet = threading.Barrier(2)
    a, b = LinearModel("a", 40 * KIB, load_barrier=meet), LinearModel("b", 40 * KIB, load_barrier=meet)
    mm = manager(100 * KIB, a, b, wait_seconds=3.0)
    errors: list[BaseException] = []

    def lease(model: LinearModel) -> None:
        try:
            with mm.use(model, working_bytes=30 * KIB):
                assert mm.used_bytes() <= 100 * KIB
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=lease, args=(model,)) for model in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert_accounting_consistent(mm)


# ------------------------------------------------------------------------------------------------------
# Out of memory


def test_out_of_memory_in_a_lease_frees_idle_models_and_the_next_request_succeeds():
    idle, model = LinearModel("idle", 32 * KIB), LinearModel("model", 32 * KIB)
    mm = manager(100 * KIB, idle, model)
    load(mm, idle)
    with pytest.raises(DeviceOutOfMemory) as info:
        with mm.use(model, working_bytes=8 * KIB):
            raise oom()
    assert "model" in str(info.value) and "out of memory" in str(info.value)
    assert state(mm, "idle") is State.NOT_LOADED
    assert state(mm, "model") is State.ON_DEVICE
    assert_accounting_consistent(mm)
    with mm.use(model, working_bytes=8 * KIB) as module:
        assert module(torch.ones(1, model.size // 4)).shape == (1, 1)
    assert model.load_calls == 1


def test_run_retries_once_after_out_of_memory():
    idle, model = LinearModel("idle", 32 * KIB), LinearModel("model", 32 * KIB)
    mm = manager(100 * KIB, idle, model)
    load(mm, idle)
    calls = []

    def work(module: nn.Module) -> str:
        calls.append(module)
        if len(calls) == 1:
            raise oom()
        return "done"

    assert mm.run(model, work, working_bytes=8 * KIB) == "done"
    assert len(calls) == 2
    assert state(mm, "idle") is State.NOT_LOADED
    assert_accounting_consistent(mm)


def test_run_gives_up_after_a_second_out_of_memory():
    model = LinearModel("model", 32 * KIB)
    mm = manager(100 * KIB, model)
    calls = []

    def work(module: nn.Module) -> None:
        calls.append(1)
        raise oom()

    with pytest.raises(DeviceOutOfMemory, match=r"ran out of memory running model.*smaller"):
        mm.run(model, work)
    assert len(calls) == 2
    assert_accounting_consistent(mm)


def test_stream_retries_only_before_the_first_item():
    model = LinearModel("model", 32 * KIB)
    mm = manager(100 * KIB, model)
    attempts = []

    def fails_at_once(module: nn.Module):
        attempts.append(1)
        if len(attempts) == 1:
            raise oom()
        yield from range(3)

    assert list(mm.stream(model, fails_at_once)) == [0, 1, 2]
    assert len(attempts) == 2

    def fails_midway(module: nn.Module):
        attempts.append(1)
        yield 0
        raise oom()

    attempts.clear()
    with pytest.raises(DeviceOutOfMemory):
        list(mm.stream(model, fails_midway))
    assert len(attempts) == 1  # a half-streamed answer is not silently restarted
    assert_accounting_consistent(mm)


def test_out_of_memory_during_load_frees_idle_models_and_retries_once():
    idle, model = LinearModel("idle", 32 * KIB), LinearModel("model", 32 * KIB)
    mm = manager(100 * KIB, idle, model)
    load(mm, idle)
    model.load_failures = [oom()]
    with mm.use(model):
        assert state(mm, "model") is State.ON_DEVICE
    assert model.load_calls == 2
    assert state(mm, "idle") is State.NOT_LOADED

    mm.unload("model")
    model.load_calls = 0
    model.load_failures = [oom(), oom()]
    with pytest.raises(DeviceOutOfMemory, match="model"):
        with mm.use(model):
            pass
    assert model.load_calls == 2
    assert state(mm, "model") is State.NOT_LOADED
    assert_accounting_consistent(mm)

    # run() retries the work, not a load that already had its retry.
    model.load_calls = 0
    model.load_failures = [oom(), oom(), oom(), oom()]
    with pytest.raises(DeviceOutOfMemory):
        mm.run(model, lambda module: None)
    assert model.load_calls == 2
    with pytest.raises(DeviceOutOfMemory):
        list(mm.stream(model, lambda module: iter([1])))
    assert model.load_calls == 4


def test_a_failed_load_gives_its_reservation_back():
    model = LinearModel("model", 32 * KIB)
    mm = manager(100 * KIB, model)
    model.load_failures = [FileNotFoundError("weights.safetensors")]
    with pytest.raises(FileNotFoundError):
        with mm.use(model):
            pass
    assert mm.used_bytes() == 0
    assert state(mm, "model") is State.NOT_LOADED
    assert_accounting_consistent(mm)


# ------------------------------------------------------------------------------------------------------
# Dropping really frees


def test_unload_and_eviction_really_free_the_model():
    model, other = LinearModel("model", 64 * KIB), LinearModel("other", 64 * KIB)
    mm = manager(100 * KIB, model, other)

    with mm.use(model) as module:
        ref = weakref.ref(module)
    del module
    mm.unload("model")
    assert ref() is None
    assert mm.last_drop_freed is True
    assert state(mm, "model") is State.NOT_LOADED and mm.used_bytes() == 0

    with mm.use(model) as module:
        ref = weakref.ref(module)
    del module
    load(mm, other)  # evicts model
    assert state(mm, "model") is State.NOT_LOADED
    assert ref() is None
    assert mm.last_drop_freed is True


def test_a_model_kept_alive_elsewhere_is_reported():
    model = LinearModel("model", 64 * KIB)
    mm = manager(100 * KIB, model)
    with mm.use(model) as module:
        kept = module
    del module
    mm.unload("model")
    assert mm.last_drop_freed is False
    assert kept.weight.numel() == model.size // 4  # it really is still alive


# ------------------------------------------------------------------------------------------------------
# Offloading (accelerators only)


def test_offloads_to_cpu_on_an_accelerator_and_brings_the_copy_back():
    a, b = LinearModel("a", 60 * KIB), LinearModel("b", 60 * KIB)
    mm = manager(100 * KIB, a, b, device="cuda:0")
    load(mm, a)
    assert a.moves == [] and mm.used_bytes() == 60 * KIB
    load(mm, b)
    assert state(mm, "a") is State.OFFLOADED
    assert a.moves == ["cpu"]
    assert mm.used_bytes() == 60 * KIB and mm.offloaded_bytes() == 60 * KIB

    with mm.use(a) as module:
        assert module.placed_on == "cuda:0"
        assert state(mm, "b") is State.OFFLOADED
    assert a.load_calls == 1 and a.moves == ["cpu", "cuda:0"]
    assert next(s.loads for s in mm.status() if s.key == "a") == 1  # brought back, not loaded again
    assert_accounting_consistent(mm)


def test_offloads_while_the_host_has_room_then_drops():
    a, b, c, d = (LinearModel(k, 60 * KIB) for k in "abcd")
    host = SmallHost("cuda", override=100 * KIB, ram=150 * KIB, models=(a, b, c, d))
    mm = MemoryManager("cuda", budget=host)
    for model in (a, b, c, d):
        mm.register(model)
    load(mm, a, b, c)  # a and b fit in host RAM together
    assert [state(mm, k) for k in "abc"] == [State.OFFLOADED, State.OFFLOADED, State.ON_DEVICE]
    load(mm, d)  # c does not fit there any more
    assert state(mm, "c") is State.NOT_LOADED and c.moves == []
    assert mm.offloaded_bytes() == 120 * KIB


def test_drops_instead_of_offloading_when_the_host_has_no_room():
    a, b = LinearModel("a", 60 * KIB), LinearModel("b", 60 * KIB)
    mm = manager(100 * KIB, a, b, device="cuda:0", host_reserve=2**62)
    load(mm, a, b)
    assert state(mm, "a") is State.NOT_LOADED
    assert a.moves == [] and mm.offloaded_bytes() == 0


def test_never_offloads_on_cpu():
    a, b = LinearModel("a", 60 * KIB), LinearModel("b", 60 * KIB)
    mm = manager(100 * KIB, a, b, host_reserve=0)
    load(mm, a, b)
    assert state(mm, "a") is State.NOT_LOADED
    assert a.moves == []


def test_a_model_that_fails_half_way_back_to_the_device_is_dropped():
    a, b = LinearModel("a", 60 * KIB), LinearModel("b", 60 * KIB)
    mm = manager(100 * KIB, a, b, device="cuda")
    load(mm, a, b)
    a.move_failures = [RuntimeError("device-side assert triggered")]
    with pytest.raises(RuntimeError, match="device-side assert"):
        with mm.use(a):
            pass
    assert state(mm, "a") is State.NOT_LOADED
    assert state(mm, "b") is State.OFFLOADED  # made room for a before the move failed
    assert mm.offloaded_bytes() == 60 * KIB and mm.used_bytes() == 0
    assert_accounting_consistent(mm)
    with mm.use(a) as module:  # the next request loads it afresh
        assert module.placed_on == "cuda"
    assert a.load_calls == 2


def test_a_model_that_fails_half_way_to_cpu_is_dropped():
    a, b = LinearModel("a", 60 * KIB), LinearModel("b", 60 * KIB)
    mm = manager(100 * KIB, a, b, device="cuda")
    load(mm, a)
    a.move_failures = [RuntimeError("copy failed")]
    load(mm, b)
    assert a.moves == ["cpu"]
    assert state(mm, "a") is State.NOT_LOADED
    assert mm.offloaded_bytes() == 0 and mm.used_bytes() == 60 * KIB


# ------------------------------------------------------------------------------------------------------
# Idle unload


def test_idle_models_are_unloaded_after_the_interval_but_pinned_ones_stay():
    idle, pinned = LinearModel("idle", 16 * KIB), LinearModel("pinned", 16 * KIB)
    mm = manager(100 * KIB, idle, pinned, idle_unload_seconds=0.1)
    released = time.monotonic()  # a lower bound on when the lease below ends
    load(mm, idle)
    with mm.use(pinned):
        assert wait_until(lambda: state(mm, "idle") is State.NOT_LOADED, seconds=5)
        assert time.monotonic() - released >= 0.1
        time.sleep(0.3)  # several reaper rounds while the lease is open
        assert state(mm, "pinned") is State.ON_DEVICE
    assert wait_until(lambda: state(mm, "pinned") is State.NOT_LOADED, seconds=5)
    assert mm.used_bytes() == 0


def test_the_idle_reaper_stops_with_its_manager():
    before = set(threading.enumerate())
    mm = manager(100 * KIB, idle_unload_seconds=0.05)
    reapers = {t for t in threading.enumerate() if t not in before}
    assert [t.name for t in reapers] == ["atelier-idle-unload"]
    del mm
    gc.collect()
    assert wait_until(lambda: not any(t.is_alive() for t in reapers), seconds=5)


class ParallelLoad(LinearModel):
    """A load that runs parallel torch work, as real `from_pretrained` calls do (dtype casts, copies)."""

    def load(self, device: str) -> nn.Module:
        torch.ones(2**22).mul_(2)  # large enough for torch to split it across its OpenMP threads
        return super().load(device)


def process_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs single-threaded here: it starts no pool")
def test_a_load_leaves_no_openmp_pool_behind_in_the_requesting_thread():
    """A server thread that loads a model lives on; an OpenMP pool started in it would too, and slow every
    other OpenMP user in the process. The load runs in a thread of its own, which takes its pool along."""
    model = ParallelLoad("a", 4 * KIB)
    mm = manager(64 * KIB, model)
    loaded, finish = threading.Event(), threading.Event()

    def server_thread() -> None:
        load(mm, model)
        loaded.set()
        finish.wait(timeout=30)

    before = process_threads()
    worker = threading.Thread(target=server_thread)
    worker.start()
    try:
        assert loaded.wait(timeout=30)
        # The load's own thread and its pool exit just after the load returns; give them a moment.
        assert wait_until(lambda: process_threads() == before + 1), (
            f"{process_threads() - before - 1} threads left behind by one load"
        )
    finally:
        finish.set()
        worker.join()

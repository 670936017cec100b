"""The one memory manager every wrapper shares.

Policy, stated honestly:
- The device holds loaded models plus the working memory of live leases, and stays inside `Budget`.
- A lease (`with manager.use(model, working_bytes=...)`) loads the model on first use, pins it while the
  block runs and refreshes its recency. A pinned model is never evicted.
- To make room, idle models are evicted least recently used first. On an accelerator an evicted model is
  offloaded to CPU RAM while the host has room, so it comes back quickly; otherwise it is dropped and its
  memory is collected, and the manager checks that nothing kept it alive.
- Room that is held by models in use is waited for (up to `wait_seconds`), never taken. A waiting
  request pins nothing and holds no room, so two waiters can never each hold what the other needs.
  Weights and working memory are claimed together, before the load.
- Loads from files run one at a time, whichever models they are for (model libraries' loaders are not
  thread-safe); moves to and from CPU RAM, and the work inside leases, run concurrently.
- On an out-of-memory error, every idle model is evicted, caches are emptied, and `run`/`stream` retry
  once. A model that fails half-way through a move is dropped rather than left split across devices.
- The estimate given before a load is replaced by the measured footprint after it. If the model then
  does not fit even after evicting idle models, it is dropped again rather than left over the budget,
  and loaded again once room is free (or refused as too large).

The manager knows nothing about modalities: it sees `Loadable` objects and byte counts.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from modules.memory.budget import Budget, format_bytes, is_accelerator
from modules.memory.errors import DeviceBusy, DeviceOutOfMemory, ModelInUse, ModelTooLarge
from modules.memory.oom import is_out_of_memory, release_memory
from modules.memory.policy import lru_victims
from modules.memory.record import Loadable, ModelRecord, State
from modules.memory.threads import in_fresh_thread

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ModelStatus:
    key: str
    state: State
    bytes: int
    pins: int
    last_load_seconds: float | None
    loads: int
    idle_seconds: float | None


class MemoryManager:
    def __init__(
        self,
        device: str = "cpu",
        budget: Budget | None = None,
        wait_seconds: float = 300.0,
        idle_unload_seconds: float | None = None,
    ) -> None:
        self.device = device
        self.budget = budget or Budget(device)
        self.wait_seconds = wait_seconds
        self._records: dict[str, ModelRecord] = {}
        # One condition guards all accounting; loads run outside it, serialised per model.
        self._cond = threading.Condition(threading.RLock())
        # And one load at a time across models: transformers 5's from_pretrained is not thread-safe (two
        # loads at once in different threads leave parameters on the meta device).
        self._loading = threading.Lock()
        #: True when the last dropped model was really collected (nothing else kept it alive).
        self.last_drop_freed: bool | None = None
        if idle_unload_seconds:
            self._start_idle_reaper(idle_unload_seconds)

    # ----------------------------------------------------------------------------------------------
    # Registration and inspection

    def register(self, loader: Loadable) -> None:
        with self._cond:
            existing = self._records.get(loader.key)
            if existing is not None and existing.loader is not loader:
                raise ValueError(f"a different model is already registered as {loader.key!r}")
            self._records.setdefault(loader.key, ModelRecord(loader))

    def used_bytes(self) -> int:
        with self._cond:
            return sum(record.device_bytes for record in self._records.values())

    def offloaded_bytes(self) -> int:
        with self._cond:
            return sum(r.bytes for r in self._records.values() if r.state is State.OFFLOADED)

    def status(self) -> list[ModelStatus]:
        now = time.monotonic()
        with self._cond:
            return [
                ModelStatus(
                    key=r.key,
                    state=r.state,
                    bytes=r.bytes,
                    pins=r.pins,
                    last_load_seconds=r.last_load_seconds,
                    loads=r.loads,
                    idle_seconds=None if r.pins or r.state is State.NOT_LOADED else now - r.last_used,
                )
                for r in self._records.values()
            ]

    # ----------------------------------------------------------------------------------------------
    # Leases

    @contextmanager
    def use(self, loader: Loadable, working_bytes: int = 0) -> Iterator[Any]:
        """Pin `loader`'s model on the device for the block, loading it first if needed."""
        record = self._record(loader)
        model = self._acquire(record, working_bytes)
        try:
            out_of_memory = False
            try:
                yield model
            except BaseException as exc:
                if not is_out_of_memory(exc):
                    raise
                out_of_memory = True
            finally:
                del model
                with self._cond:
                    record.working_bytes -= working_bytes
            if out_of_memory:
                # The caller's `with` statement still holds the OOM, and through its traceback the failed
                # work's activations, until this raises: the recovery frees idle models, not those.
                # `run`/`stream` collect again once the OOM is handled, before they retry.
                self._recover_from_oom()
                raise DeviceOutOfMemory(self._oom_message(record))
        finally:
            with self._cond:
                record.pins -= 1
                record.last_used = time.monotonic()
                self._cond.notify_all()

    def run(self, loader: Loadable, work: Callable[[Any], T], working_bytes: int = 0) -> T:
        """`work(model)` inside a lease; after an out-of-memory recovery it is retried once.

        Only the work is retried: a load that ran out of memory has had its retry inside the lease.
        """
        started = False
        try:
            with self.use(loader, working_bytes) as model:
                started = True
                return work(model)
        except DeviceOutOfMemory:
            if not started:
                raise
            log.warning("retrying %s once after freeing memory", loader.key)
        release_memory(self.device)  # the failed attempt's activations are only now unreferenced
        with self.use(loader, working_bytes) as model:
            return work(model)

    def stream(self, loader: Loadable, work: Callable[[Any], Iterator[T]], working_bytes: int = 0) -> Iterator[T]:
        """Like `run` for generators: the retry happens only if nothing was yielded yet."""
        started = yielded = False
        try:
            with self.use(loader, working_bytes) as model:
                started = True
                for item in work(model):
                    yielded = True
                    yield item
            return
        except DeviceOutOfMemory:
            if yielded or not started:
                raise
            log.warning("retrying %s once after freeing memory", loader.key)
        release_memory(self.device)
        with self.use(loader, working_bytes) as model:
            yield from work(model)

    # ----------------------------------------------------------------------------------------------
    # Explicit control

    def unload(self, key: str) -> None:
        """Drop a model now (System tab's Unload button); refuses while it serves a request."""
        with self._cond:
            record = self._records[key]
            if record.pins:
                raise ModelInUse(f"{key} is serving a request; try again when it finishes")
            if record.state is not State.NOT_LOADED:
                self._drop(record)

    def free_idle(self) -> None:
        """Evict every idle model from the device (offloading where possible)."""
        with self._cond:
            for record in list(self._records.values()):
                if record.idle_on_device:
                    self._evict(record)
        release_memory(self.device)

    # ----------------------------------------------------------------------------------------------
    # Internals

    def _record(self, loader: Loadable) -> ModelRecord:
        with self._cond:
            record = self._records.get(loader.key)
        if record is None or record.loader is not loader:
            raise KeyError(f"{loader.key!r} is not registered with this memory manager")
        return record

    def _acquire(self, record: ModelRecord, working_bytes: int) -> Any:
        """Pin `record` on the device with `working_bytes` claimed, loading it first if needed.

        A request pins nothing while it waits for room. Pinning a resident model and then waiting for
        working memory would let two requests each hold what the other needs until both time out.
        """
        deadline = time.monotonic() + self.wait_seconds
        while True:
            with self._cond:
                if record.state is State.ON_DEVICE:
                    self._make_room(working_bytes, record, deadline)
                    if record.state is State.ON_DEVICE:  # it may have been evicted while we waited
                        record.pins += 1
                        record.working_bytes += working_bytes
                        return record.model
                    continue
            with record.load_lock:  # one load per model: requests queued behind it find it resident
                model = self._load(record, working_bytes, deadline)
            if model is not None:
                return model

    def _load(self, record: ModelRecord, working_bytes: int, deadline: float) -> Any | None:
        """Bring `record` onto the device and pin it; None when the caller should look again."""
        with self._cond:
            if record.state is State.ON_DEVICE:
                return None  # loaded by the request this one queued behind
            needed = record.bytes or record.loader.estimate_bytes()
            self._make_room(needed + working_bytes, record, deadline)
            record.reserved_bytes = needed + working_bytes
            record.pins += 1
            reactivating = record.state is State.OFFLOADED  # a copy in CPU RAM comes back; no load
        started = time.perf_counter()
        try:
            model = self._bring_in(record)
            measured = record.loader.measure_bytes(model)
        except BaseException:
            with self._cond:
                record.reserved_bytes = 0
                record.pins -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            # From reserved to resident in one step, so no other request can count the room twice.
            record.reserved_bytes = 0
            record.model, record.bytes, record.state = model, measured, State.ON_DEVICE
            del model
            record.last_load_seconds = time.perf_counter() - started
            if not reactivating:
                record.loads += 1
            try:
                # The reservation covers this unless the estimate was low; then evict others at once.
                # Never wait here: waiting while holding the model is what `_acquire` avoids.
                self._make_room(working_bytes, record, deadline=0.0)
            except (ModelTooLarge, DeviceBusy) as exc:
                record.pins -= 1
                self._drop(record)  # it cannot stay over the budget
                if isinstance(exc, ModelTooLarge):
                    raise
                log.info("%s is larger than estimated (%s); waiting for room to load it again",
                         record.key, format_bytes(measured))
                return None
            record.working_bytes += working_bytes
            return record.model

    def _bring_in(self, record: ModelRecord) -> Any:
        """Load (or re-activate an offloaded copy); on OOM free idle models and try once more."""
        try:
            return self._load_or_move(record)
        except BaseException as exc:
            if not is_out_of_memory(exc):
                raise
        # Outside the except block, so the failed attempt's traceback is gone before collecting.
        self._recover_from_oom()
        try:
            return self._load_or_move(record)
        except BaseException as exc:
            if not is_out_of_memory(exc):
                raise
        raise DeviceOutOfMemory(self._oom_message(record))

    def _load_or_move(self, record: ModelRecord) -> Any:
        if record.state is not State.OFFLOADED:
            # A load's OpenMP pool must not stay behind in a long-lived server thread (see `threads`).
            with self._loading:
                return in_fresh_thread(lambda: record.loader.load(self.device))
        try:
            return record.loader.move(record.model, self.device)
        except BaseException:
            with self._cond:  # half-moved: neither copy can be trusted
                self._drop(record)
            raise

    def _make_room(self, extra: int, requester: ModelRecord, deadline: float) -> None:
        """Evict idle models until `extra` more bytes fit; until `deadline`, wait for leases holding room."""
        while True:
            limit = self.budget.limit()
            over = self.used_bytes() + extra - limit
            if over <= 0:
                return
            victims = lru_victims((r for r in self._records.values() if r is not requester), over)
            if victims is not None:
                for victim in victims:
                    self._evict(victim)
                release_memory(self.device, collect=False)  # `_drop` collected where it had to
                continue
            # Too large only if it could not fit with everything else gone. Room held by other leases,
            # of this model or others, comes back when they end: that is worth waiting for.
            own = requester.bytes if requester.state is State.ON_DEVICE else 0
            if own + extra > limit:
                raise ModelTooLarge(
                    f"{requester.key} needs {format_bytes(own + extra)} but the memory budget on "
                    f"{self.device} is {format_bytes(limit)}. Pick a smaller model or settings, or "
                    f"raise --memory-budget."
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceBusy(
                    f"{requester.key} is waiting for memory held by models serving other requests; "
                    f"try again in a moment."
                )
            self._cond.wait(timeout=min(remaining, 1.0))

    def _evict(self, record: ModelRecord) -> None:
        """Offload an idle model to CPU RAM when that helps and fits, otherwise drop it."""
        offload = (
            is_accelerator(self.device)
            and record.loader.can_offload
            # host_room() is what is still free, so copies offloaded earlier are already counted in it.
            and record.bytes <= self.budget.host_room()
        )
        if offload:
            try:
                record.model = record.loader.move(record.model, "cpu")
                record.state = State.OFFLOADED
                log.info("offloaded %s to CPU RAM (%s)", record.key, format_bytes(record.bytes))
                self._cond.notify_all()
                return
            except Exception:  # a failed move leaves a half-moved model: drop it below
                log.exception("offloading %s failed; dropping it", record.key)
        self._drop(record)

    def _drop(self, record: ModelRecord) -> None:
        model, record.model, record.state = record.model, None, State.NOT_LOADED
        try:
            record.loader.close(model)
        except Exception:
            log.exception("closing %s failed", record.key)
        try:
            alive = weakref.ref(model)
        except TypeError:  # not weak-referenceable (e.g. a dict); nothing to check
            alive = None
        del model
        # Reference counting frees an acyclic model at once; a full collection (tens of ms with torch
        # loaded, under the manager's lock) is only worth it when something may still hold it.
        release_memory(self.device, collect=alive is None or alive() is not None)
        self.last_drop_freed = alive is None or alive() is None
        if not self.last_drop_freed:
            log.warning("%s was unloaded but something still references it; memory not freed", record.key)
        log.info("dropped %s", record.key)
        self._cond.notify_all()

    def _recover_from_oom(self) -> None:
        log.warning("out of memory on %s: freeing every idle model", self.device)
        self.free_idle()

    def _oom_message(self, record: ModelRecord) -> str:
        return (
            f"{self.device} ran out of memory running {record.key}, even after freeing every idle model. "
            f"Try smaller settings (size, batch, length) or a smaller model."
        )

    def _start_idle_reaper(self, idle_seconds: float) -> None:
        # The thread holds the manager weakly, so a manager that is gone takes its reaper with it.
        manager = weakref.ref(self)

        def reap() -> None:
            while True:
                time.sleep(min(idle_seconds, 30.0))
                alive = manager()
                if alive is None:
                    return
                alive._unload_idle(idle_seconds)
                del alive

        threading.Thread(target=reap, name="atelier-idle-unload", daemon=True).start()

    def _unload_idle(self, idle_seconds: float) -> None:
        cutoff = time.monotonic() - idle_seconds
        with self._cond:
            for record in self._records.values():
                if record.pins == 0 and record.state is not State.NOT_LOADED and record.last_used < cutoff:
                    log.info("unloading %s after %.0f s idle", record.key, idle_seconds)
                    self._drop(record)

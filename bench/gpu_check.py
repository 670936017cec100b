"""The memory manager and every wrapper on a real device: one prepared check, start to finish.

    python bench/gpu_check.py --device cuda --out gpu_check.json      # real sizes, about 5 minutes on an H200
    python bench/gpu_check.py --device cpu --tiny --out cpu.json      # the same code at tiny sizes (CI)

Random-weight models at real size are built from each family's published configuration (SD 1.5 in fp16,
MusicGen small, BLIP base, a 1.7B Llama-shaped chat model in bf16, Point-E base40M + upsampler; see
bench/gpu_families.py), saved with `save_pretrained`, written into a catalogue as local-folder entries
that take dtype and defaults from the matching models.yaml entry, and run through `build_wrapper` and one
`MemoryManager`, as the app runs them. No hub, no downloads, no gradio.

Sections (each prints a table; all go to --out as JSON):
  1. accounting  the manager's footprint of each model against the change in torch.cuda.memory_allocated
                 over its load (target within 5%); the working memory declared for a request against the
                 peak allocated during it (reported; the budget section judges its effect). On CPU, against
                 the tensor sizes in the saved files instead; the working-memory peak is CUDA only.
  2. dtypes      each model's weights in the dtype its models.yaml entry gives for the device; outputs finite.
  3. speed       each wrapper's request against the raw library call on the same loaded weights and inputs
                 (target >= 0.9 on CUDA; on CPU at tiny size the ratio is printed, not judged); our Point-E
                 denoiser against the official code's attention on the same weights.
  4. unchanged   requests to resident models when nothing else changed: moves and loads (target 0).
  5. offload     bringing each model back from CPU RAM against a cold load from its folder: GB/s and the
                 ratio (target >= 10x; InvokeAI reports about 2.2 GB/s). CUDA only: on CPU an evicted
                 model is dropped, and coming back is a cold load.
  6. budget      a budget below all the models together, 8 threads of mixed requests: the peak of
                 torch.cuda.max_memory_allocated (CUDA) and of the manager's own account against the budget
                 (target: never over), with the evictions it took and no request failing.
  7. oom         a real out-of-memory error and the recovery ladder: idle models evicted and the retry
                 succeeding (CUDA only), a clear DeviceOutOfMemory where nothing can help, and the
                 accounting consistent afterwards.

Exits 1 when a target is missed. Speed targets are judged on CUDA only: tiny models on a shared CPU
measure noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on a hub that isn't there
# The tables are the output: the libraries' load reports, progress bars and casting advice would bury them.
for variable, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
    os.environ.setdefault(variable, value)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import yaml  # noqa: E402

from gpu_families import Family, families, finite, official_style_copy  # noqa: E402
from modules.catalog import ModelEntry, load_catalog  # noqa: E402
from modules.memory import Budget, DeviceOutOfMemory, MemoryManager, State, format_bytes  # noqa: E402
from modules.memory.oom import release_memory  # noqa: E402
from modules.memory.threads import in_fresh_thread  # noqa: E402
from modules.tiny import build_tiny_catalog, cache_root  # noqa: E402
from modules.wrappers import build_wrapper, wrapper_tasks  # noqa: E402
from modules.wrappers.base import HostSettings, Wrapper  # noqa: E402

#: Bump when a family's build changes, so a cached build folder is rebuilt.
BUILD_VERSION = "1"
THREADS = 8
#: Requests each budget thread makes, at real and at tiny size (tiny keeps the CPU mode well under a minute).
REQUESTS_PER_THREAD = {"real": 5, "tiny": 3}
GIB = 1024**3

Row = dict[str, Any]


# ------------------------------------------------------------------------------------------------------
# Measuring


_STARTED = time.perf_counter()


def progress(text: str) -> None:
    """A timestamped line as the run goes: where a run cut short by a time limit got to."""
    print(f"  [{time.perf_counter() - _STARTED:6.1f} s] {text}", flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(device: str, work: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds for `work()`, with the device drained before and after so queued kernels are counted."""
    sync(device)
    started = time.perf_counter()
    result = work()
    sync(device)
    return time.perf_counter() - started, result


def allocated(device: str) -> int | None:
    return torch.cuda.memory_allocated(device) if device.startswith("cuda") else None


def verdict(passed: bool, judged: bool = True) -> bool | None:
    """A row's `ok`: True or False where the target applies here, None where it is only reported."""
    return bool(passed) if judged else None


class MoveCounter:
    """Counts what the manager does to the models: offloads to CPU RAM, returns to the device, drops.

    It wraps each wrapper's own `move` and `close`, which still run: the count is a tally, not a stand-in.
    """

    def __init__(self) -> None:
        self.to_cpu = 0
        self.to_device = 0
        self.drops = 0
        self._lock = threading.Lock()

    def watch(self, wrapper: Wrapper) -> None:
        move, close = wrapper.move, wrapper.close

        def counted_move(model: Any, device: str) -> Any:
            with self._lock:
                if device == "cpu":
                    self.to_cpu += 1
                else:
                    self.to_device += 1
            return move(model, device)

        def counted_close(model: Any) -> None:
            with self._lock:
                self.drops += 1
            close(model)

        wrapper.move = counted_move  # type: ignore[method-assign]
        wrapper.close = counted_close  # type: ignore[method-assign]

    @property
    def total(self) -> int:
        return self.to_cpu + self.to_device


@dataclass
class Check:
    device: str
    tiny: bool
    runs: int
    manager: MemoryManager
    wrappers: dict[str, Wrapper]
    families: list[Family]
    folders: dict[str, Path]
    moves: MoveCounter
    #: task -> the result of the measured request in the accounting section (for the finiteness check)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def footprint(self, task: str) -> int:
        return self.status(task).bytes

    def status(self, task: str) -> Any:
        key = self.wrappers[task].key
        return next(s for s in self.manager.status() if s.key == key)

    def loads(self) -> int:
        return sum(s.loads for s in self.manager.status())

    def set_budget(self, limit: int) -> None:
        self.manager.budget = Budget(self.device, override=limit)

    def unlimited_budget(self) -> int:
        """A budget the manager never reaches here: the device's memory (CUDA) or the machine's RAM."""
        if self.cuda:
            return torch.cuda.mem_get_info(self.device)[1]
        import psutil

        return psutil.virtual_memory().total

    def settings(self, family: Family, light: bool = False) -> dict[str, Any]:
        return family.settings(self.tiny, light)

    def load_all(self) -> None:
        """Every model resident (loading the ones never loaded, so each has a measured footprint)."""
        for wrapper in self.wrappers.values():
            with self.manager.use(wrapper):
                pass

    def unload_all(self) -> None:
        for status in self.manager.status():
            if status.state is not State.NOT_LOADED:
                self.manager.unload(status.key)
        release_memory(self.device)


# ------------------------------------------------------------------------------------------------------
# Building the models and the catalogue


def build_models(
    root: Path, device: str, tiny: bool, all_families: list[Family]
) -> tuple[Path, dict[str, Path], dict[str, str]]:
    """Build (once per folder) each family's random weights, and a catalogue of local-folder entries.

    Returns the catalogue, each task's folder, and the families that failed to build (task -> error):
    the check goes on without them, since a GPU window is too scarce to lose to one family.
    """
    shipped = load_catalog(ROOT / "models.yaml", wrapper_tasks())
    borrowed = {task: Path(group.models[0].source.path) for task, group in build_tiny_catalog().tasks.items()}
    tasks: dict[str, Any] = {}
    folders: dict[str, Path] = {}
    failures: dict[str, str] = {}
    for family in all_families:
        real: ModelEntry = shipped.tasks[family.task].get(family.catalogue_id)
        folder = root / family.model_id
        marker = folder / ".complete"
        if not (marker.is_file() and marker.read_text() == BUILD_VERSION):
            dtype = getattr(torch, real.dtype.for_device(device))
            try:
                seconds, _ = timed(device, lambda: _build_one(family, folder, tiny, dtype, borrowed, device))
            except Exception as exc:
                failures[family.task] = error_text(exc)
                progress(f"building {family.model_id} FAILED: {failures[family.task]}")
                continue
            marker.write_text(BUILD_VERSION)
            progress(f"built {family.model_id} in {seconds:.1f} s")
        folders[family.task] = folder
        entry = real.model_dump(exclude_none=True, exclude={"prefer"}) | {
            "id": family.model_id,
            "name": f"{real.name} (random weights, {'tiny' if tiny else 'real'} size)",
            "source": {"path": str(folder)},
            "license": "random weights (no licence restrictions)",
            "license_note": None,
            "random_weights": True,
        }
        entry = {key: value for key, value in entry.items() if value is not None}
        tasks[family.task] = {"default": family.model_id, "models": [entry]}
    catalogue = root / "models.yaml"
    catalogue.write_text(yaml.safe_dump({"tasks": tasks}, sort_keys=False))
    return catalogue, folders, failures


def error_text(exc: BaseException) -> str:
    """The exception and where it was raised, in one line for the tables."""
    import traceback

    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}"[:400] + where


def _build_one(family: Family, folder: Path, tiny: bool, dtype: Any, borrowed: dict[str, Path], device: str) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    with torch.device(device):  # random init on the accelerator: seconds instead of minutes for 1.7B weights
        family.build(folder, tiny, dtype, borrowed)
    release_memory(device)


def unsaved_buffer_bytes(modules: list[Any]) -> int:
    """Buffers that live only in memory (non-persistent ones, e.g. positional tables): the files lack them."""
    total = 0
    for module in modules:
        saved = set(module.state_dict())
        total += sum(b.numel() * b.element_size() for name, b in module.named_buffers() if name not in saved)
    return total


def files_bytes(folder: Path, dtype_name: str) -> int:
    """Bytes of every tensor in the folder's safetensors files, at the element size of `dtype_name`."""
    from safetensors import safe_open

    element = torch.empty((), dtype=getattr(torch, dtype_name)).element_size()
    total = 0
    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():
                numel = 1
                for size in weights.get_slice(key).get_shape():
                    numel *= size
                total += numel * element
    return total


# ------------------------------------------------------------------------------------------------------
# The sections


def accounting(check: Check) -> tuple[list[Row], list[str]]:
    rows = []
    check.set_budget(check.unlimited_budget())
    for family in list(check.families):
        try:
            rows.append(_account(check, family))
        except Exception as exc:  # the first load of each model is here: a family that cannot run leaves the check
            logging.getLogger("gpu_check").exception("%s failed", family.model_id)
            rows.append({"model": check.wrappers[family.task].key, "error": error_text(exc), "ok": False})
            check.families.remove(family)
            check.manager.unload(check.wrappers.pop(family.task).key)
    notes = [
        "ratio = manager footprint / " + ("change in torch.cuda.memory_allocated over the load" if check.cuda else
        "files_bytes (memory_allocated is CUDA only)"),
        "files_bytes: the tensors in the saved files at the entry's dtype, plus the buffers that are never saved",
        "working memory: declared by the wrapper vs the peak allocated above the resident weights during a warm request"
        + ("; working_ratio = peak / declared, reported (no target): above 1, the wrapper declares less than it uses"
           if check.cuda else ": CUDA only, skipped on CPU"),
    ]
    return rows, notes


def _account(check: Check, family: Family) -> Row:
    """One model: its load against the device's own count, then a warm request's working memory."""
    wrapper = check.wrappers[family.task]
    release_memory(check.device)
    before = allocated(check.device)
    with check.manager.use(wrapper) as model:
        sync(check.device)
        after = allocated(check.device)
        unsaved = unsaved_buffer_bytes(wrapper.modules_of(model))
    footprint = check.footprint(family.task)
    dtype = wrapper.dtype_name
    in_files = files_bytes(check.folders[family.task], dtype) + unsaved
    family.run_wrapper(wrapper, check.settings(family, light=True))  # first use: lazy inits are not working memory
    settings = check.settings(family)
    declared = family.declared_working(wrapper, settings)
    if check.cuda:
        torch.cuda.reset_peak_memory_stats(check.device)
        resident = torch.cuda.memory_allocated(check.device)
    check.results[family.task] = family.run_wrapper(wrapper, settings)
    sync(check.device)
    progress(f"accounting: {wrapper.key} loaded and measured")
    if check.cuda:
        delta = after - before
        peak = torch.cuda.max_memory_allocated(check.device) - resident
        reference, measured_by = delta, "memory_allocated"
    else:
        delta = peak = None
        reference, measured_by = in_files, "files"
    return {
        "model": wrapper.key,
        "dtype": dtype,
        "manager_bytes": footprint,
        "allocated_delta_bytes": delta,
        "files_bytes": in_files,
        "measured_by": measured_by,
        "ratio": footprint / reference if reference else None,
        "ok": verdict(reference > 0 and abs(footprint / reference - 1) <= 0.05),
        "declared_working_bytes": declared,
        "peak_working_bytes": peak,
        "working_ratio": peak / declared if peak is not None and declared else None,
    }


def dtypes(check: Check) -> tuple[list[Row], list[str]]:
    rows = []
    for family in check.families:
        wrapper = check.wrappers[family.task]
        with check.manager.use(wrapper) as model:
            found = sorted(
                {str(p.dtype).removeprefix("torch.") for module in wrapper.modules_of(model) for p in module.parameters() if p.is_floating_point()}
            )
            result = check.results.get(family.task) or family.run_wrapper(wrapper, check.settings(family))
            is_finite = family.outputs_finite(model, wrapper, result, check.settings(family))
        expected = wrapper.entry.dtype.for_device(check.device)
        rows.append(
            {
                "model": wrapper.key,
                "catalogue_dtype": expected,
                "weights_dtype": ",".join(found),
                "finite": is_finite,
                "ok": verdict(found == [expected] and is_finite),
            }
        )
    return rows, [f"catalogue_dtype: what models.yaml's {check.device.split(':')[0]} dtype asks for; weights_dtype: the loaded parameters"]


def speed(check: Check) -> tuple[list[Row], list[str]]:
    rows = []
    judged = check.cuda and not check.tiny
    for family in check.families:
        wrapper = check.wrappers[family.task]
        settings = check.settings(family)

        def raw() -> Any:  # in a thread of its own, as the wrapper's work runs
            with check.manager.use(wrapper) as model:
                return in_fresh_thread(lambda: family.run_raw(model, wrapper, settings))

        def through_wrapper() -> Any:
            return family.run_wrapper(wrapper, settings)

        timed(check.device, raw)  # warm both
        timed(check.device, through_wrapper)
        raw_times, wrapper_times = [], []
        for _ in range(check.runs):  # alternated, so a busy moment slows both alike
            raw_times.append(timed(check.device, raw)[0])
            wrapper_times.append(timed(check.device, through_wrapper)[0])
        raw_s, wrapper_s = statistics.median(raw_times), statistics.median(wrapper_times)
        progress(f"speed: {wrapper.key} timed")
        rows.append(
            {
                "model": wrapper.key,
                "raw_s": raw_s,
                "wrapper_s": wrapper_s,
                "ratio": raw_s / wrapper_s,
                "target": ">= 0.9" if judged else "reported only",
                "ok": verdict(raw_s / wrapper_s >= 0.9, judged),
            }
        )
    if "pointcloud" in check.wrappers:
        rows.append(pointe_step(check, judged))
    notes = [
        f"median of {check.runs} alternated runs after one warm-up each; ratio = raw / wrapper time (1.0: the wrapper adds nothing)",
        "the wrapper's time includes its postprocessing (PNG, WAV, PLY + GLB files), as in the app",
        "last row: one Point-E base denoiser call (batch 2 with guidance) with our attention vs the official code's, same weights",
    ]
    return rows, notes


def pointe_step(check: Check, judged: bool) -> Row:
    wrapper = check.wrappers["pointcloud"]
    with check.manager.use(wrapper) as pipe:
        ours = pipe.base
        reference = official_style_copy(ours)
        config = ours.config
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(2, config.input_channels, config.n_ctx, generator=generator).to(check.device)
        t = torch.full((2,), 500, device=check.device)
        text = torch.randn(1, config.cond_width, generator=generator)
        text = torch.cat([text / text.norm(), torch.zeros_like(text)]).to(check.device)  # conditional, unconditional
        calls = {"ours": lambda: ours(x, t, text), "official": lambda: reference(x, t, text)}

        def measure() -> tuple[dict[str, Any], dict[str, list[float]]]:  # in a thread of its own, as the app samples
            with torch.inference_mode():
                outputs = {name: call() for name, call in calls.items()}  # warm both
                times: dict[str, list[float]] = {"ours": [], "official": []}
                for _ in range(max(3, check.runs)):
                    for name, call in calls.items():
                        times[name].append(timed(check.device, call)[0])
            return outputs, times

        outputs, times = in_fresh_thread(measure)
        difference = (outputs["ours"] - outputs["official"]).abs().max().item()
        scale = outputs["official"].abs().max().item()
        del reference, outputs
    ours_s, official_s = statistics.median(times["ours"]), statistics.median(times["official"])
    return {
        "model": "point-e base step vs official attention",
        "raw_s": official_s,
        "wrapper_s": ours_s,
        "ratio": official_s / ours_s,
        "target": (">= 0.9" if judged else "reported only") + f"; max |diff| {difference:.1e} of {scale:.1e}",
        "ok": verdict(official_s / ours_s >= 0.9, judged) if difference <= 1e-3 * max(scale, 1.0) else False,
    }


def unchanged(check: Check) -> tuple[list[Row], list[str]]:
    check.set_budget(check.unlimited_budget())
    check.load_all()  # every model resident before counting
    moves, loads = check.moves.total, check.loads()
    for _ in range(2):
        for family in check.families:
            family.run_wrapper(check.wrappers[family.task], check.settings(family, light=True))
    rows = [
        {
            "requests": 2 * len(check.families),
            "moves": check.moves.total - moves,
            "loads": check.loads() - loads,
            "ok": verdict(check.moves.total == moves and check.loads() == loads),
        }
    ]
    return rows, ["every model resident and the budget ample: two rounds of requests must move and load nothing"]


def offload(check: Check) -> tuple[list[Row], list[str]]:
    check.set_budget(check.unlimited_budget())
    check.unload_all()
    cold: dict[str, float] = {}
    for family in check.families:  # libraries imported and kernels warm: this times the load itself
        wrapper = check.wrappers[family.task]

        def load() -> None:
            with check.manager.use(wrapper):
                pass

        cold[family.task] = timed(check.device, load)[0]
    if not check.cuda:
        rows = [
            {"model": check.wrappers[f.task].key, "bytes": check.footprint(f.task), "cold_load_s": cold[f.task],
             "back_s": None, "gb_per_s": None, "ratio": None, "ok": None}
            for f in check.families
        ]
        return rows, ["CPU: an evicted model is dropped, not offloaded (there is no slower memory to offload to), "
                      "so coming back is a cold load; offload timing is CUDA only"]
    offloads = check.moves.to_cpu
    offload_s, _ = timed(check.device, check.manager.free_idle)
    offloaded = sum(1 for s in check.manager.status() if s.state is State.OFFLOADED)
    rows = []
    for family in check.families:
        wrapper = check.wrappers[family.task]

        def back() -> None:
            with check.manager.use(wrapper):
                pass

        seconds = timed(check.device, back)[0]
        size = check.footprint(family.task)
        rows.append(
            {
                "model": wrapper.key,
                "bytes": size,
                "cold_load_s": cold[family.task],
                "back_s": seconds,
                "gb_per_s": size / seconds / 1e9,
                "ratio": cold[family.task] / seconds,
                "ok": verdict(cold[family.task] / seconds >= 10),
            }
        )
    notes = [
        f"free_idle offloaded {offloaded} of {len(check.families)} models ({check.moves.to_cpu - offloads} moves) in {offload_s:.2f} s",
        "cold load: from the saved folder through the wrapper's load (the OS page cache may hold the files: "
        "a cold start from disk is slower, so the ratio here is the harder case); target ratio >= 10",
        "GB/s: weights brought back from CPU RAM per second (InvokeAI reports about 2.2 GB/s)",
    ]
    return rows, notes


def budget(check: Check) -> tuple[list[Row], list[str]]:
    """8 threads of mixed requests under a budget that cannot hold every model at once."""
    check.set_budget(check.unlimited_budget())
    check.load_all()
    light = {f.task: check.settings(f, light=True) for f in check.families}
    sizes = {f.task: check.footprint(f.task) for f in check.families}
    needs = {f.task: sizes[f.task] + f.declared_working(check.wrappers[f.task], light[f.task]) for f in check.families}
    hungriest = max(needs, key=needs.get)  # type: ignore[arg-type]
    # Room for the hungriest request and a quarter of the other models: never all of them at once.
    limit = needs[hungriest] + (sum(sizes.values()) - sizes[hungriest]) // 4
    check.manager.free_idle()
    check.set_budget(limit)
    release_memory(check.device)
    baseline = allocated(check.device)
    if check.cuda:
        torch.cuda.reset_peak_memory_stats(check.device)
    moves, loads = check.moves.to_cpu + check.moves.drops, check.loads()
    returns = check.moves.to_device
    errors: list[str] = []
    done = threading.Event()
    manager_peak = [0]

    def watch() -> None:  # samples the manager's own account; the CUDA peak comes from torch itself
        while not done.is_set():
            manager_peak[0] = max(manager_peak[0], check.manager.used_bytes())
            done.wait(0.002)

    per_thread = REQUESTS_PER_THREAD["tiny" if check.tiny else "real"]

    def requests(index: int) -> None:
        for k in range(per_thread):
            family = check.families[(index + k) % len(check.families)]
            try:
                family.run_wrapper(check.wrappers[family.task], light[family.task])
            except Exception as exc:  # every failure is reported; none is expected
                errors.append(f"{family.task}: {type(exc).__name__}: {exc}")

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    workers = [threading.Thread(target=requests, args=(i,)) for i in range(THREADS)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    sync(check.device)
    seconds = time.perf_counter() - started
    done.set()
    watcher.join()
    device_peak = torch.cuda.max_memory_allocated(check.device) if check.cuda else None
    evictions = check.moves.to_cpu + check.moves.drops - moves
    rows = [
        {
            "budget_bytes": limit,
            "all_models_bytes": sum(sizes.values()),
            "device_peak_bytes": device_peak,
            "manager_peak_bytes": manager_peak[0],
            "baseline_bytes": baseline,
            "requests": THREADS * per_thread,
            "seconds": seconds,
            "evictions": evictions,
            "returns": check.moves.to_device - returns,
            "cold_loads": check.loads() - loads,
            "errors": errors,
            "ok": verdict(
                not errors
                and evictions > 0
                and manager_peak[0] <= limit
                and (device_peak is None or device_peak <= limit)
            ),
        }
    ]
    notes = [
        f"{THREADS} threads x {per_thread} requests, every task in turn; budget = the hungriest request "
        f"({hungriest}: weights + declared working memory) + a quarter of the other models",
        "device peak: torch.cuda.max_memory_allocated over the run, everything in the process included"
        if check.cuda else "device peak: CUDA only; on CPU the manager's own account is the measure",
        "evictions: idle models offloaded to CPU RAM or dropped; returns: offloaded copies brought back"
        + ("" if check.cuda else " (none on CPU, which drops instead of offloading)"),
    ]
    return rows, notes


def out_of_memory(check: Check) -> tuple[list[Row], list[str]]:
    """Real allocation failures inside a lease, and what the manager makes of them."""
    target = check.wrappers.get("caption") or next(iter(check.wrappers.values()))
    idle_tasks = [task for task, wrapper in check.wrappers.items() if wrapper is not target]
    # The manager believes there is room: only the device itself can say no.
    check.set_budget(8 * check.unlimited_budget())
    check.load_all()
    release_memory(check.device)
    stray_before = (allocated(check.device) or 0) - check.manager.used_bytes()
    rows = [_retry_succeeds(check, target, idle_tasks) if check.cuda else
            {"rung": "idle models evicted, retry succeeds", "attempts": None, "outcome": "skipped",
             "detail": "CUDA only: a CPU allocation that fails only until idle models are dropped cannot be forced "
                       "safely (the OS overcommits RAM)", "ok": None}]
    # Nothing can help: more than the device (or the address space) holds.
    claim = 2 * check.unlimited_budget() if check.cuda else 2**50
    attempts: list[int] = []
    try:
        check.manager.run(target, lambda model: _claim(check.device, claim, attempts))
        outcome, message = "no error", ""
    except DeviceOutOfMemory as exc:
        outcome, message = "DeviceOutOfMemory", str(exc)
    rows.append(
        {
            "rung": "nothing helps: a clear message",
            "attempts": len(attempts),
            "outcome": outcome,
            "detail": message,
            "ok": verdict(outcome == "DeviceOutOfMemory" and len(attempts) == 2 and target.key in message),
        }
    )
    statuses = check.manager.status()
    resident = sum(s.bytes for s in statuses if s.state is State.ON_DEVICE)
    pins = sum(s.pins for s in statuses)
    stray_after = (allocated(check.device) or 0) - check.manager.used_bytes()
    consistent = check.manager.used_bytes() == resident and pins == 0
    if check.cuda:  # what torch holds beyond the manager's account may not have grown
        consistent = consistent and stray_after - stray_before <= 0.05 * resident + 64 * 2**20
    rows.append(
        {
            "rung": "accounting afterwards",
            "attempts": None,
            "outcome": f"used {format_bytes(check.manager.used_bytes())} = resident {format_bytes(resident)}, pins {pins}"
            + (f", allocated beyond the account {format_bytes(stray_before)} -> {format_bytes(stray_after)}" if check.cuda else ""),
            "detail": "",
            "ok": verdict(consistent),
        }
    )
    return rows, [f"each rung runs `manager.run({target.key}, work)`, whose work claims device memory the budget does not know of"]


def _claim(device: str, size: int, attempts: list[int]) -> int:
    """Allocate `size` bytes on the device (never written: a CPU claim must not touch overcommitted pages)."""
    attempts.append(size)
    block = torch.empty(size, dtype=torch.uint8, device=device)
    del block
    return size


def _retry_succeeds(check: Check, target: Wrapper, idle_tasks: list[str]) -> Row:
    """Leave only `margin` free beside the resident models, then claim more than that but less than the
    idle models free when they are offloaded: the first attempt must fail, the retry must succeed."""
    idle = sum(check.footprint(task) for task in idle_tasks)
    margin = GIB if not check.tiny else 64 * 2**20
    free, _total = torch.cuda.mem_get_info(check.device)
    ballast = torch.empty(max(0, free - margin), dtype=torch.uint8, device=check.device)  # another tenant, say
    attempts: list[int] = []
    try:
        check.manager.run(target, lambda model: _claim(check.device, margin + idle // 2, attempts))
        outcome = "succeeded"
    except DeviceOutOfMemory as exc:
        outcome = f"DeviceOutOfMemory: {exc}"
    finally:
        del ballast
        release_memory(check.device)
    evicted = [task for task in idle_tasks if check.status(task).state is not State.ON_DEVICE]
    return {
        "rung": "idle models evicted, retry succeeds",
        "attempts": len(attempts),
        "outcome": outcome,
        "detail": f"claimed {format_bytes(margin + idle // 2)} with {format_bytes(margin)} free; evicted: {', '.join(evicted) or 'none'}",
        "ok": verdict(outcome == "succeeded" and len(attempts) == 2 and evicted == idle_tasks),
    }


SECTIONS: dict[str, Callable[[Check], tuple[list[Row], list[str]]]] = {
    "accounting": accounting,
    "dtypes": dtypes,
    "speed": speed,
    "unchanged": unchanged,
    "offload": offload,
    "budget": budget,
    "oom": out_of_memory,
}


# ------------------------------------------------------------------------------------------------------
# Output


def cell(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if key.endswith("_bytes") and isinstance(value, int):
        return format_bytes(value)
    if isinstance(value, float):
        return f"{value:.3f}" if key.endswith("_s") or key == "seconds" else f"{value:.2f}"
    if isinstance(value, list):
        return "; ".join(map(str, value)) or "none"
    return str(value)


def print_table(name: str, rows: list[Row], notes: list[str]) -> None:
    print(f"\n== {name}")
    keys = list(dict.fromkeys(key for row in rows for key in row))  # an error row has fewer columns
    cells = [[cell(k, row.get(k)) for k in keys] for row in rows]
    widths = [min(60, max(len(k), *(len(c[i]) for c in cells))) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for line in cells:
        print("  ".join(c[:w].ljust(w) for c, w in zip(line, widths)))
    for note in notes:
        print(f"  - {note}")


def missed(report: dict[str, Any]) -> list[str]:
    found = []
    for name, section in report["sections"].items():
        for row in section["rows"]:
            for key, value in row.items():
                if key == "ok" and value is False:
                    found.append(f"{name}: {row.get('model') or row.get('rung') or name}")
    return found


# ------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu (auto: cuda when present)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (the default on CPU)")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--work", type=Path, help="where models are built (default: a folder under the Atelier cache)")
    parser.add_argument("--runs", type=int, help="alternated timed runs per side in the speed section (default: 3, tiny 1)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset, in this order")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
    except ImportError:  # the image family will say what is missing
        pass
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or not device.startswith("cuda")
    wanted = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"--sections: unknown {unknown}; known: {list(SECTIONS)}")
    size = "tiny" if tiny else "real"
    work = args.work or cache_root().parent.parent / "gpu-check" / f"{size}-{device.split(':')[0]}"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"gpu_check: {device}, {size} sizes, torch {torch.__version__}, models in {work}", flush=True)

    picture = work / "picture.png"
    _write_picture(picture)
    all_families = families(picture)
    catalogue, folders, failures = build_models(work, device, tiny, all_families)
    all_families = [family for family in all_families if family.task not in failures]
    built_s = time.perf_counter() - started
    manager = MemoryManager(device, budget=Budget(device))
    host = HostSettings(output_dir=Path(tempfile.mkdtemp(prefix="atelier-gpu-check-")))
    catalog = load_catalog(catalogue, wrapper_tasks())
    moves = MoveCounter()
    wrappers = {}
    for family in all_families:
        wrappers[family.task] = build_wrapper(catalog.tasks[family.task].get(family.model_id), manager, host=host)
        moves.watch(wrappers[family.task])
    check = Check(device, tiny, args.runs or (1 if tiny else 3), manager, wrappers, all_families, folders, moves)

    report: dict[str, Any] = {
        "device": device,
        "size": size,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, **_versions()},
        "build_s": built_s,
        "build_failures": failures,
        "sections": {},
    }
    for name in [n for n in SECTIONS if n in wanted]:
        section_started = time.perf_counter()
        try:
            rows, notes = SECTIONS[name](check)
        except Exception as exc:  # one broken section must not cost the others their GPU time
            logging.getLogger("gpu_check").exception("section %s failed", name)
            rows, notes = [{"section": name, "error": error_text(exc), "ok": False}], []
        seconds = time.perf_counter() - section_started
        report["sections"][name] = {"rows": rows, "notes": notes, "seconds": seconds}
        print_table(f"{name} ({seconds:.1f} s)", rows, notes)
        sys.stdout.flush()
        write_report(report, args.out, started, complete=False)  # a run cut short still leaves its tables
    write_report(report, args.out, started, complete=True)
    print(f"\n{report['seconds']:.0f} s in all ({built_s:.0f} s building); targets missed: "
          f"{'; '.join(report['targets_missed']) or 'none'}")
    return 1 if report["targets_missed"] else 0


def write_report(report: dict[str, Any], out: Path | None, started: float, complete: bool) -> None:
    report["complete"] = complete
    report["seconds"] = time.perf_counter() - started
    report["gradio_imported"] = "gradio" in sys.modules
    report["targets_missed"] = (
        [f"build: {task}: {error}" for task, error in report["build_failures"].items()]
        + missed(report)
        + (["gradio was imported"] if report["gradio_imported"] else [])
    )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _write_picture(path: Path) -> None:
    """A 640 x 480 colour gradient to caption (BLIP resizes it like any upload)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640]
    pixels = np.stack([x * 255 // 639, y * 255 // 479, (x + y) * 255 // 1118], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("transformers", "diffusers", "accelerate", "pydantic"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


if __name__ == "__main__":
    sys.exit(main())

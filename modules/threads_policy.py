"""The process's CPU threading policy: chat stays fast while other work runs in the same server.

In a server, model work always has company: another tab's model, a second visitor's request, Gradio's
own event loop. torch's CPU kernels and llama.cpp's CPU build both run on OpenMP, and by default an
OpenMP thread that finishes its share of a parallel region spins for the next one (libgomp: about 3 ms of
busy-waiting at every barrier, hundreds of barriers per token). Spinning threads of two pools on the same
cores burn each other's time slices: measured on 2 cores, the embedded SmolLM2 on llama.cpp fell to 3-6
tokens/s beside other work, and ran at 57-70 with passive waits. So, for the whole process:

1. Waiting OpenMP threads sleep: `OMP_WAIT_POLICY=PASSIVE` (libgomp then never spins; LLVM's and Intel's
   OpenMP also drop their block time to 0). A lone request pays a futex wake-up per barrier instead.
2. The cores are not split between libraries. torch's intra-op threads and llama.cpp's `n_threads` both
   use every core this process may run on (`compute_threads`, which honours `OMP_NUM_THREADS`). A lone
   request, the usual case, gets the whole CPU; two at once share it through the OS scheduler, each about
   half, which only works because idle threads sleep. A fixed split would halve every lone request to
   protect the rarer overlap.

`bench/threads.py` measures both backends' chat speed during an image generation, with this policy and
without it. One run on 2 cores shared with other processes (load average about 11): without the policy,
a chat alone in the server ran at 1.4 tokens/s on llama.cpp and 1.1 on transformers (the company was
other processes, which libgomp cannot see, so it kept spinning); with it, 29 and 7.6, and beside an image
0.68 and 0.50 of that. OpenMP reads its environment once, when the library loads, so `apply_thread_policy()` runs at
the very top of app.py, before anything imports torch or llama_cpp. A user who set how OpenMP threads wait
(`WAIT_SETTINGS`) or how many there are keeps their choice.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from typing import Any

#: Settings of how OpenMP threads wait (the standard's, libgomp's, LLVM's and Intel's): a user who set any
#: of them has chosen, and the policy stays out of the way.
WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def apply_thread_policy() -> None:
    """Make waiting OpenMP threads sleep instead of spinning, unless the user set how they wait; and cap
    the malloc arenas that worker threads multiply."""
    if not any(name in os.environ for name in WAIT_SETTINGS):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    limit_malloc_arenas()


#: glibc's mallopt parameter for the most malloc arenas (M_ARENA_MAX).
M_ARENA_MAX = -8
#: Arenas for the whole process. glibc's default, 8 per core, lets a server whose requests run on many
#: worker threads keep growing: `bench/load.py` measured +23% resident memory over its minute with the
#: default and +7% with 2.
MALLOC_ARENAS = 2


@functools.cache
def glibc() -> Any:
    """The C library when it is glibc (whose allocator these tune); None elsewhere (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas (unless the user set `MALLOC_ARENA_MAX`); elsewhere, nothing."""
    if "MALLOC_ARENA_MAX" not in os.environ and glibc() is not None:
        glibc().mallopt(M_ARENA_MAX, MALLOC_ARENAS)


def return_freed_memory() -> None:
    """Hand the memory that finished requests freed back to the system (glibc's `malloc_trim`).

    glibc keeps freed heap pages for reuse, so a batch's activations, once freed, still count as the
    server's resident memory until something else happens to reuse them; a few milliseconds after each
    device turn keep that from piling up over a workshop. Elsewhere, nothing."""
    if glibc() is not None:
        glibc().malloc_trim(0)


def compute_threads() -> int:
    """Threads one parallel model call may use: `OMP_NUM_THREADS` when set (torch reads it too), else
    every core this process may run on (a container's limit, not the host's count)."""
    requested = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if requested.isdigit() and int(requested) > 0:
        return int(requested)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

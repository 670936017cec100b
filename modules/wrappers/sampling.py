"""Sampling from a request's own random stream inside transformers' `generate`.

`generate(do_sample=True)` draws every token with `torch.multinomial` from torch's global generator and
takes no generator argument (transformers 5.24). A process has one global generator, so two requests
sampling at the same time (chat runs beside the device queue) would draw from each other's stream, and a
seed would no longer reproduce its output. A logits processor cannot do the draw itself either: the
sampling warpers (temperature, top-k, top-p) run after the caller's processors, and MusicGen appends its
classifier-free guidance after them too.

So each request keeps its own generator state and lends it to the global generator for the draw alone:
a logits processor (called before every draw) takes a process-wide lock and swaps the request's state
in; `generate` draws; a stopping criterion (called right after every draw) swaps it back out and
releases the lock. The lock is held from the logits processing to the draw, never across a forward
pass, so requests still run side by side. Seeding the request's state as `torch.manual_seed(seed)` seeds
the global one keeps the samples a seed gave before.

Every wrapper that samples through `generate` does this, so nothing draws from the global stream
unguarded: `with own_random_stream(seed) as (swap_in, swap_out)`, then pass `swap_in` first among the
logits processors and `swap_out` first among the stopping criteria.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Held while a request's state is swapped into a global generator (one draw).
_LENDING = threading.Lock()


def _global_state(device: Any) -> tuple[Callable[[], Any], Callable[[Any], None]]:
    """(get, set) for the global generator `torch.multinomial` uses on `device`."""
    import torch

    if device.type == "cpu":
        return torch.get_rng_state, torch.set_rng_state
    backend = getattr(torch, device.type)  # torch.cuda, torch.mps, torch.xpu: the same two functions
    return (lambda: backend.get_rng_state(device)), (lambda state: backend.set_rng_state(state, device))


class RandomStream:
    """One request's generator state, lent to the global generator around each draw."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._state: Any = None  # created on the first draw, when the device is known
        self._lent: tuple[Any, Callable[[Any], None], Callable[[], Any]] | None = None  # (saved, set, get)

    def lend(self, device: Any) -> None:
        """Swap this request's state into the global generator of `device` (blocks while another is lent)."""
        import torch

        if self._lent is not None:
            return
        get, set_ = _global_state(device)
        if self._state is None:
            self._state = torch.Generator(device=device).manual_seed(self.seed).get_state()
        _LENDING.acquire()
        saved = get()
        set_(self._state)
        self._lent = (saved, set_, get)

    def take_back(self) -> None:
        """Keep the advanced state and restore the global one."""
        if self._lent is None:
            return
        saved, set_, get = self._lent
        self._lent = None
        try:
            self._state = get()
            set_(saved)
        finally:
            _LENDING.release()


@contextmanager
def own_random_stream(seed: int) -> Iterator[tuple[Any, Any]]:
    """A (logits processor, stopping criterion) pair that makes `generate` sample from `seed`'s own stream.

    Leaving the block takes the state back even if `generate` failed between the two calls.
    """
    import torch
    from transformers import LogitsProcessor, StoppingCriteria

    stream = RandomStream(seed)

    class LendBeforeTheDraw(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            stream.lend(scores.device)
            return scores

    class TakeBackAfterTheDraw(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            stream.take_back()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    try:
        yield LendBeforeTheDraw(), TakeBackAfterTheDraw()
    finally:
        stream.take_back()

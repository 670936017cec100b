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

Every wrapper that samples through `generate` one request at a time does this, so nothing draws from the
global stream unguarded: `with own_random_stream(seed) as (swap_in, swap_out)`, then pass `swap_in` first
among the logits processors and `swap_out` first among the stopping criteria.

Several requests in one batch (music) need a stream each, which one global generator cannot give. There
`generate` runs greedy, the warpers come from `sampling_warpers` in the caller's own processor list, and
`draw_per_request`, last in that list, draws each request's rows from its own generator.
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


def draw_per_request(parts: list[tuple[slice, int]]) -> Any:
    """A logits processor that draws each request's rows of a batch from that request's own generator.

    For a `generate(do_sample=False)` that runs the sampling warpers itself, in its own processor list,
    before this one: it leaves only the drawn token of each row, which the greedy pick then takes. Unlike
    lending (above), requests sharing one batch each keep their own stream, and a request's rows draw the
    same tokens in a batch as alone. `parts` is (rows, seed) per request; generators are seeded as
    `torch.manual_seed(seed)` seeds the global one, so a seed keeps the samples it gave before.
    """
    import torch
    from transformers import LogitsProcessor

    class DrawPerRequest(LogitsProcessor):
        def __init__(self) -> None:
            self.generators: list[Any] = []

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            if not self.generators:  # the device is known at the first draw
                self.generators = [torch.Generator(device=scores.device).manual_seed(seed) for _, seed in parts]
            probs = torch.softmax(scores, dim=-1)
            drawn = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
            for (rows, _), generator in zip(parts, self.generators):
                drawn[rows] = torch.multinomial(probs[rows], num_samples=1, generator=generator).squeeze(1)
            only_drawn = torch.full_like(scores, -float("inf"))
            return only_drawn.scatter_(1, drawn[:, None], 0.0)

    return DrawPerRequest()


def sampling_warpers(temperature: float, top_k: int, top_p: float) -> list[Any]:
    """What `generate(do_sample=True)` would apply before its draw, in its order; 0 turns top-k and top-p off."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers: list[Any] = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if 0 < top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers

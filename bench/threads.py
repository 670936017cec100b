"""Chat tokens/s while an image generation runs in the same server, against chat alone, per chat backend.

One app server serves the tiny image model and the embedded SmolLM2 on each chat backend. For each
backend, each round sends the same greedy chat twice, interleaved so a noisy machine slows both alike:
once alone, and once while a second client keeps image generations coming back to back. The speed is
the decode rate the /chat stats line reports (tokens over generation time). The whole run is done twice,
on two servers: with the app's thread policy (modules/threads_policy.py) and with a baseline that the
bench sets in the server's environment, which the policy then leaves alone:

- `default` (the default): libgomp's own behaviour with no setting (`GOMP_SPINCOUNT=300000`, which is
  what libgomp uses when OMP_WAIT_POLICY is unset), i.e. the app before the policy;
- `active`: `OMP_WAIT_POLICY=ACTIVE`, OpenMP threads spin while they wait.

Target (issue 11): chat during an image / chat alone >= 0.45, a fair share of two cores.

What it measures depends on the queue, so it also reports how much of each chat's model work overlapped
an image's, from the models' leases ("in use" in the public /system_status, polled every 0.1 s). Where
the app's one fair device queue runs one request at a time, the overlap is 0 %: the decode rate is then
chat's own rate on an unshared CPU, and the end-to-end rate (tokens over the time from submit to answer,
waiting for the image included) is what a user sees in the mixed load. Both are printed.

    PYTHONPATH=$PWD/.cache/llama-site python bench/threads.py [--rounds 2] [--max-new-tokens 96]

Without llama-cpp-python importable (as on PYTHONPATH above), only the transformers backend runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from gradio_client import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chat_backends import BACKENDS, PROMPT, STATS, SYSTEM, embedded_chat_per_backend  # noqa: E402
from modules.tiny import build_tiny_catalog  # noqa: E402
from modules.wrappers.llama_chat import llama_cpp_installed  # noqa: E402
from tests.conftest import AppServer  # noqa: E402

BASELINES = {"default": {"GOMP_SPINCOUNT": "300000"}, "active": {"OMP_WAIT_POLICY": "ACTIVE"}}
IMAGE_KEY = "image/tiny-sd"
POLL_SECONDS = 0.1


class Leases:
    """Which models are serving a request over time, from the public /system_status ("in use"): what the
    server really runs, wherever a request waits (Gradio's queue, or the app's own device queue)."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.samples: list[tuple[float, dict[str, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leases", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            rows = self.client.predict(api_name="/system_status")
            self.samples.append((time.perf_counter(), {row["key"]: row["in use"] for row in rows}))

    def in_use(self, key: str) -> bool:
        return bool(self.samples) and self.samples[-1][1].get(key, 0) > 0

    def overlap(self, key: str, other: str, start: float, end: float) -> float | None:
        """Of the samples between `start` and `end` in which `key` was in use, the fraction in which
        `other` was too; None when no sample saw `key` in use."""
        busy = [in_use for t, in_use in self.samples if start <= t <= end and in_use.get(key, 0) > 0]
        return sum(in_use.get(other, 0) > 0 for in_use in busy) / len(busy) if busy else None

    def __enter__(self) -> Leases:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def bench_catalogue(folder: Path, backends: dict[str, str]) -> Path:
    """The tiny image model and the embedded chat model once per backend."""
    image = build_tiny_catalog().tasks["image"]
    tasks = {"chat": embedded_chat_per_backend(backends), "image": image.model_dump(mode="json", exclude_defaults=True)}
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"tasks": tasks}))
    return path


class ImageLoad:
    """A second client that keeps image generations coming, one after another, inside a `with` block."""

    def __init__(self, client: Any, settings: dict[str, Any], leases: Leases) -> None:
        self.client, self.settings, self.leases = client, settings, leases
        self.finished = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="image-load", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.client.predict("a lighthouse at dusk", **self.settings, api_name="/generate_image")
            self.finished += 1

    def __enter__(self) -> ImageLoad:
        self._thread.start()
        deadline = time.monotonic() + 600
        while not self.leases.in_use(IMAGE_KEY) and time.monotonic() < deadline:  # the chat starts once
            time.sleep(POLL_SECONDS)  # an image is being made
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class ChatRun:
    tokens: int
    decode_rate: float  # tokens/s as the /chat stats line reports it: over generation time only
    submitted: float
    answered: float

    @property
    def end_to_end_rate(self) -> float:
        """Tokens over the time from submit to answer, waiting included: what a user waits for."""
        return self.tokens / (self.answered - self.submitted)


def chat(client: Any, model_id: str, max_new_tokens: int) -> ChatRun:
    """One greedy reply: the same text, and so the same token count, every time."""
    settings = dict(model=model_id, system_prompt=SYSTEM, temperature=0.0, top_p=0.9, max_new_tokens=max_new_tokens)
    submitted = time.perf_counter()
    _reply, note = client.predict(PROMPT, **settings, api_name="/chat")
    stats = STATS.search(note)
    return ChatRun(int(stats.group(1)), float(stats.group(2)), submitted, time.perf_counter())


@dataclass
class Measured:
    alone: list[ChatRun]
    with_image: list[ChatRun]
    overlaps: list[float]  # per chat with an image: the fraction of its model's work time an image ran too
    images: int  # images finished while the chats ran

    def ratio(self, rate: str) -> float:
        return statistics.median(getattr(r, rate) for r in self.with_image) / statistics.median(
            getattr(r, rate) for r in self.alone
        )


def measure(server_env: dict[str, str], backends: dict[str, str], args: argparse.Namespace) -> dict[str, Measured]:
    """One server with `server_env`; per backend, `args.rounds` chats alone and as many beside images."""
    image_settings = {"steps": args.image_steps, "width": args.image_side, "height": args.image_side, "seed": 1}
    results: dict[str, Measured] = {}
    with tempfile.TemporaryDirectory() as scratch:
        serve_args = ["--models", str(bench_catalogue(Path(scratch), backends))]
        with AppServer(serve_args, Path(scratch), env={"HF_HUB_OFFLINE": "1", **server_env}) as server:
            chat_client, image_client, status_client = (
                Client(server.url, verbose=False, download_files=False) for _ in range(3)
            )
            for model_id in backends.values():  # load every model and warm up, untimed
                chat(chat_client, model_id, 8)
            image_client.predict("warm-up", **image_settings, api_name="/generate_image")
            with Leases(status_client) as leases:
                for backend, model_id in backends.items():
                    measured = results[backend] = Measured([], [], [], 0)
                    for round_ in range(1, args.rounds + 1):
                        measured.alone.append(chat(chat_client, model_id, args.max_new_tokens))
                        with ImageLoad(image_client, image_settings, leases) as load:
                            run = chat(chat_client, model_id, args.max_new_tokens)
                        measured.with_image.append(run)
                        shared = leases.overlap(f"chat/{model_id}", IMAGE_KEY, run.submitted, run.answered)
                        measured.overlaps.append(shared or 0.0)
                        measured.images += load.finished
                        print(
                            f"  {backend} round {round_}: alone {measured.alone[-1].decode_rate:.1f} tok/s, "
                            f"with images {run.decode_rate:.1f} tok/s ({measured.overlaps[-1]:.0%} overlap)",
                            flush=True,
                        )
    return results


def report(label: str, results: dict[str, Measured]) -> None:
    print(f"\n{label}: median over rounds, chat with images / chat alone (target >= 0.45)")
    for backend, m in results.items():
        alone = statistics.median(r.decode_rate for r in m.alone)
        loaded = statistics.median(r.decode_rate for r in m.with_image)
        print(
            f"  {backend:<13} decode {loaded:6.1f} / {alone:6.1f} tok/s = {m.ratio('decode_rate'):.2f}"
            f" | end to end {m.ratio('end_to_end_rate'):.2f}"
            f" | overlap with a running image {statistics.median(m.overlaps):.0%}, {m.images} images finished"
        )
        if max(m.overlaps) < 0.05:
            print(
                f"  {backend:<13} (chat and image never ran at the same time: the device queue took them in turn; "
                "the decode rate is chat's own, the end-to-end rate includes waiting for the image)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--baseline", choices=sorted(BASELINES), default="default", help="the run without the policy")
    parser.add_argument("--no-baseline", action="store_true", help="measure only with the app's policy")
    parser.add_argument("--image-side", type=int, default=128, help="tiny image size: sets how long one image takes")
    parser.add_argument("--image-steps", type=int, default=16)
    args = parser.parse_args()

    backends = dict(BACKENDS)
    if not llama_cpp_installed():
        backends.pop("llama.cpp")
        print("llama-cpp-python is not importable: the llama.cpp backend is left out "
              "(PYTHONPATH=$PWD/.cache/llama-site after `make llama-site`)")
    runs = {"with the app's thread policy (OMP_WAIT_POLICY=PASSIVE)": {}}
    if not args.no_baseline:
        env = BASELINES[args.baseline]
        runs[f"baseline {args.baseline} ({' '.join(f'{k}={v}' for k, v in env.items())})"] = env
    results = {}
    for label, env in runs.items():
        # Other processes are company too (what OpenMP cannot see): say how busy the machine was.
        print(f"{label} (machine load average {os.getloadavg()[0]:.1f}):", flush=True)
        results[label] = measure(env, backends, args)
    for label, measured in results.items():
        report(label, measured)
    if len(results) == 2:
        with_policy, without = results.values()
        # The policy matters most where OpenMP cannot see the company: other processes on the machine.
        print("\nchat's decode rate with the policy / without it (median over rounds):")
        for backend in backends:
            for kind in ("alone", "with_image"):
                after = statistics.median(r.decode_rate for r in getattr(with_policy[backend], kind))
                before = statistics.median(r.decode_rate for r in getattr(without[backend], kind))
                print(f"  {backend:<13} {kind.replace('_', ' '):<10} {after:6.1f} / {before:6.1f} tok/s = {after / before:.2f}x")


if __name__ == "__main__":
    main()

"""A room on one server: N simulated users mix every tab on --tiny, then a fairness check, in one run.

Starts the real app on loopback with `--tiny` and one `--auth` login per simulated user (a client is the
logged-in user, so every user is a client of its own even though all come from 127.0.0.1). Each user is
its own `gradio_client` and runs requests one at a time, cycling through the tabs from its own starting
tab, with a short think time between answers, until the time or request bound. Then:

1. **Load** (`--users` 32 for `--seconds` 60, at most `--requests` each; answers still running
   `--drain` seconds after the end are counted as unanswered and cancelled): answers per minute, p50 and
   p95 latency (submit to answer) per tab, errors (a `gr.Error` saying "try again in" is a quota answer,
   counted apart), the queue's length over time (the public `/system_memory` endpoint, polled by one
   more user) and the server's resident memory after warm-up and at the end (growth target < 10%).
2. **Fairness**: a light user sends image requests one at a time, first with the server otherwise idle,
   then while a heavy user keeps `--flood` image requests waiting in the queue. Prints the light user's
   p95 latency with the flood against without it (target <= 2x).

    python bench/load.py [--users 32] [--seconds 60] [--requests 20] [--flood 20]

The request mix (REQUESTS) uses each tab's tiny defaults, with short replies, 2 s of music and no mesh,
so one run takes about 3-4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from gradio_client import Client, handle_file
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import AppServer  # noqa: E402

#: tab -> (endpoint, arguments); "{image}" is replaced by the path of a small picture for captioning.
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/chat", {"message": "Write a haiku about the sea.", "max_new_tokens": 32}),
    "image": ("/generate_image", {"prompt": "a lighthouse at dusk"}),
    "caption": ("/caption", {"image": "{image}"}),
    "music": ("/generate_music", {"prompt": "lo-fi piano", "duration": 2}),
    "3d": ("/generate_3d", {"prompt": "a red chair"}),
}
QUOTA_ANSWER = "try again in"
THINK_SECONDS = (0.5, 2.0)
QUEUE_POLL_SECONDS = 2.0
HTTP_TIMEOUT_SECONDS = 60.0


@dataclass
class Outcome:
    tab: str
    user: str
    submitted: float  # seconds since the phase began
    seconds: float | None = None  # latency, submit to answer; None while unanswered
    error: str | None = None
    quota: bool = False


@dataclass
class Room:
    """What the simulated users share: the server, the picture they caption, and everything they saw."""

    url: str
    picture: str
    started: float = field(default_factory=time.perf_counter)
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, user: str) -> Client:
        # A browser waits for an upload as long as it takes; httpx's default (5 s) would count a slow one as an error.
        return Client(self.url, auth=(user, password(user)), verbose=False, download_files=False,
                      analytics_enabled=False, httpx_kwargs={"timeout": HTTP_TIMEOUT_SECONDS})

    def arguments(self, tab: str) -> tuple[str, dict[str, Any]]:
        endpoint, arguments = REQUESTS[tab]
        return endpoint, {k: handle_file(self.picture) if v == "{image}" else v for k, v in arguments.items()}

    def request(self, client: Client, user: str, tab: str, drain_deadline: float | None = None) -> Outcome:
        """One request, waited for until its answer (or the drain deadline: then it is cancelled)."""
        endpoint, arguments = self.arguments(tab)
        outcome = Outcome(tab, user, time.perf_counter() - self.started)
        with self.lock:
            self.outcomes.append(outcome)
        job = client.submit(**arguments, api_name=endpoint)
        try:
            timeout = None if drain_deadline is None else max(0.0, drain_deadline - time.perf_counter())
            job.result(timeout=timeout)
        except TimeoutError:
            job.cancel()
            return outcome
        except Exception as exc:  # gradio_client raises the server's gr.Error as an exception with its message
            outcome.error = f"{type(exc).__name__}: {exc}"
            outcome.quota = QUOTA_ANSWER in outcome.error
        outcome.seconds = time.perf_counter() - self.started - outcome.submitted
        return outcome


def password(user: str) -> str:
    return f"pw-{user}"


def simulated_user(room: Room, client: Client, user: str, first_tab: int, end: float, drain_end: float, requests: int) -> None:
    """Requests one at a time, cycling through the tabs from `first_tab`, until `end` or `requests`."""
    rng = random.Random(user)
    tabs = list(REQUESTS)
    for i in range(requests):
        if time.perf_counter() >= end:
            return
        room.request(client, user, tabs[(first_tab + i) % len(tabs)], drain_end)
        time.sleep(rng.uniform(*THINK_SECONDS))


def poll_queue(client: Client, room: Room, stop: threading.Event, samples: list[tuple[float, int, int]]) -> None:
    while not stop.wait(QUEUE_POLL_SECONDS):
        status = client.predict(api_name="/system_memory")
        samples.append((time.perf_counter() - room.started, status["queue_running"], status["queue_waiting"]))


def percentile(values: list[float], q: int) -> float:
    """The q-th percentile (0-100), interpolated; one value is its own percentile."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def in_threads(work: list[Any]) -> None:
    threads = [threading.Thread(target=w, daemon=True) for w in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def clients_for(room: Room, users: list[str]) -> dict[str, Client]:
    """One logged-in client per user, made in parallel (each fetches the app's config)."""
    clients: dict[str, Client] = {}
    in_threads([lambda user=user: clients.__setitem__(user, room.client(user)) for user in users])
    return clients


def load_phase(room: Room, server: AppServer, args: argparse.Namespace) -> None:
    users = [f"user{i}" for i in range(1, args.users + 1)]
    clients = clients_for(room, [*users, "monitor"])
    process = psutil.Process(server.process.pid)
    # Warm-up: every tab once, so each model is loaded before memory and latency are measured.
    for tab in REQUESTS:
        warm = room.request(clients[users[0]], users[0], tab)
        if warm.error:
            raise SystemExit(f"warm-up {tab} failed: {warm.error}")
    rss_warm = process.memory_info().rss
    room.outcomes.clear()
    room.started = time.perf_counter()
    end, drain_end = room.started + args.seconds, room.started + args.seconds + args.drain
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_queue, args=(clients["monitor"], room, stop, samples), daemon=True)
    poller.start()
    in_threads(
        [lambda i=i, user=user: simulated_user(room, clients[user], user, i, end, drain_end, args.requests)
         for i, user in enumerate(users)]
    )
    elapsed = time.perf_counter() - room.started
    stop.set()
    poller.join()
    rss_end = process.memory_info().rss
    report_load(room.outcomes, samples, elapsed, rss_warm, rss_end, args)
    if any(o.error and not o.quota for o in room.outcomes):
        print(f"  the server's last exception: {last_exception(server.log())}")


def report_load(
    outcomes: list[Outcome], samples: list[tuple[float, int, int]], elapsed: float, rss_warm: int, rss_end: int,
    args: argparse.Namespace,
) -> None:
    answers = [o for o in outcomes if o.seconds is not None and o.error is None]
    errors = [o for o in outcomes if o.error is not None and not o.quota]
    quota = [o for o in outcomes if o.quota]
    unanswered = [o for o in outcomes if o.seconds is None]
    print(f"\nload: {args.users} users, {args.seconds:g} s of requests (+ up to {args.drain:g} s to finish), "
          f"{elapsed:.0f} s in all")
    print(f"  answers: {len(answers)} = {60 * len(answers) / elapsed:.1f} per minute; "
          f"errors: {len(errors)}; quota answers: {len(quota)}; unanswered at the end: {len(unanswered)}")
    print(f"  {'tab':<8} {'answers':>7} {'p50 s':>7} {'p95 s':>7} {'max s':>7}")
    by_tab: dict[str, list[float]] = defaultdict(list)
    for outcome in answers:
        by_tab[outcome.tab].append(outcome.seconds)
    for tab in REQUESTS:
        seconds = by_tab.get(tab, [])
        if seconds:
            print(f"  {tab:<8} {len(seconds):>7} {percentile(seconds, 50):>7.1f} {percentile(seconds, 95):>7.1f} {max(seconds):>7.1f}")
        else:
            print(f"  {tab:<8} {0:>7}")
    for message, count in Counter(f"{o.tab}: {o.error}" for o in errors).most_common(5):
        print(f"  error x{count}: {message[:200]}")
    print("  queue (t s: running/waiting): " + ", ".join(f"{t:.0f}: {r}/{w}" for t, r, w in samples))
    growth = (rss_end - rss_warm) / rss_warm
    print(f"  server resident memory: {rss_warm / 2**20:.0f} MiB after warm-up, {rss_end / 2**20:.0f} MiB at the end "
          f"({growth:+.1%}; target < +10%)")


def last_exception(log: str) -> str:
    """The exception line of the last traceback in the server's log (its tail), or "" when none."""
    tail = log[log.rfind("Traceback (most recent call last)"):] if "Traceback" in log else ""
    found = re.search(r"^[\w.]+(?:Error|Exception): .*$", tail, re.MULTILINE)
    return found.group(0)[:400] if found else ""


def light_user_latencies(room: Room, client: Client, requests: int) -> list[float]:
    """The light user's image requests, one at a time; its latencies (submit to answer)."""
    seconds = []
    for _ in range(requests):
        outcome = room.request(client, "light", "image")
        if outcome.error:
            raise SystemExit(f"the light user's request failed: {outcome.error}")
        seconds.append(outcome.seconds)
    return seconds


def fairness_phase(room: Room, args: argparse.Namespace) -> None:
    clients = clients_for(room, ["light", "heavy"])
    alone = light_user_latencies(room, clients["light"], args.light_requests)
    done = threading.Event()

    def flood() -> None:
        """Keep `args.flood` image requests of the heavy user waiting until the light user is done."""
        jobs: list[Any] = []
        endpoint, arguments = room.arguments("image")
        while not done.is_set():
            jobs = [job for job in jobs if not job.done()]
            jobs += [clients["heavy"].submit(**arguments, api_name=endpoint) for _ in range(args.flood - len(jobs))]
            time.sleep(0.1)
        for job in jobs:
            job.cancel()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    time.sleep(1.0)  # the flood is queued before the light user's first request
    flooded = light_user_latencies(room, clients["light"], args.light_requests)
    done.set()
    flooder.join()
    ratio = percentile(flooded, 95) / percentile(alone, 95)
    print(f"\nfairness: a light user's image requests, one at a time ({args.light_requests} each way)")
    print(f"  alone:                             p50 {percentile(alone, 50):5.1f} s, p95 {percentile(alone, 95):5.1f} s")
    print(f"  while a heavy user queues {args.flood:>3}:    p50 {percentile(flooded, 50):5.1f} s, "
          f"p95 {percentile(flooded, 95):5.1f} s")
    print(f"  p95 with the flood / alone: {ratio:.1f}x (target <= 2x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long users keep sending requests")
    parser.add_argument("--requests", type=int, default=20, help="most requests one user sends")
    parser.add_argument("--drain", type=float, default=60.0, help="how long answers may still take after that")
    parser.add_argument("--flood", type=int, default=20, help="requests the heavy user keeps waiting")
    parser.add_argument("--light-requests", type=int, default=6)
    args = parser.parse_args()

    users = [f"user{i}" for i in range(1, args.users + 1)] + ["monitor", "light", "heavy"]
    auth = ",".join(f"{user}:{password(user)}" for user in users)
    with tempfile.TemporaryDirectory() as scratch:
        picture = Path(scratch) / "picture.png"
        Image.new("RGB", (48, 32), (200, 120, 40)).save(picture)
        with AppServer(["--tiny", "--auth", auth], Path(scratch)) as server:
            room = Room(server.url, str(picture))
            load_phase(room, server, args)
            fairness_phase(room, args)


if __name__ == "__main__":
    main()

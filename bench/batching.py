"""Batching: throughput of 8 captions asked at once (they share forward passes) against the same 8 asked
one at a time, on `--tiny` through the real server (target >= 2x on CPU).

The 8 come from 8 visitors (told apart by the address the share tunnel reports), all submitted at once;
the first starts alone and the rest wait together, so they run as one batch. "One at a time" sends the
same 8 in a row from one visitor. Rounds alternate, and medians are compared.

    python bench/batching.py [--rounds 3] [--requests 8] [--tokens 24]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from tests.conftest import AppServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24, help="max_new_tokens per caption")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atelier-batching-"))
    pictures = []
    for i in range(args.requests):
        pictures.append(work / f"picture-{i}.png")
        Image.new("RGB", (64, 48), (30 * i % 255, 200, 90)).save(pictures[-1])

    with AppServer(["--tiny"], work) as server:
        visitors = [Client(server.url, headers={"X-Forwarded-For": f"10.9.0.{i}"}, verbose=False) for i in range(args.requests)]
        one = visitors[0]
        settings = {"max_new_tokens": args.tokens, "api_name": "/caption"}
        one.predict(handle_file(str(pictures[0])), **settings)  # load the model

        def together() -> float:
            started = time.perf_counter()
            jobs = [v.submit(handle_file(str(p)), **settings) for v, p in zip(visitors, pictures)]
            stats = [job.result(timeout=600)[2] for job in jobs]
            seconds = time.perf_counter() - started
            shared = sum("one pass with" in line for line in stats)
            print(f"  together: {seconds:.2f} s, {shared} of {len(jobs)} shared a pass")
            return seconds

        def in_a_row() -> float:
            started = time.perf_counter()
            for picture in pictures:
                one.predict(handle_file(str(picture)), **settings)
            seconds = time.perf_counter() - started
            print(f"  one at a time: {seconds:.2f} s")
            return seconds

        batched, single = [], []
        for _ in range(args.rounds):
            single.append(in_a_row())
            batched.append(together())
    ratio = statistics.median(single) / statistics.median(batched)
    print(f"captions/s one at a time: {args.requests / statistics.median(single):.2f}; "
          f"batched: {args.requests / statistics.median(batched):.2f}")
    print(f"batching ratio (throughput batched / one at a time): {ratio:.2f}  (target >= 2)")


if __name__ == "__main__":
    main()

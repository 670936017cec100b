"""Batching: throughput of 8 captions (or music clips) asked at once (they share forward passes) against
the same 8 asked one at a time, on `--tiny` through the real server (target >= 2x on CPU for captions).

The 8 come from 8 visitors (told apart by the address the share tunnel reports), all submitted at once;
the first starts alone and the rest wait together, so they run as one batch. "One at a time" sends the
same 8 in a row from one visitor. Rounds alternate, and medians are compared.

    python bench/batching.py [--task caption|music] [--rounds 3] [--requests 8] [--tokens 24] [--seconds 2]
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
    parser.add_argument("--task", choices=["caption", "music"], default="caption")
    parser.add_argument("--seconds", type=float, default=2, help="seconds of audio per music clip")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="atelier-batching-"))
    pictures = []
    for i in range(args.requests):
        pictures.append(work / f"picture-{i}.png")
        Image.new("RGB", (64, 48), (30 * i % 255, 200, 90)).save(pictures[-1])

    with AppServer(["--tiny"], work) as server:
        visitors = [Client(server.url, headers={"X-Forwarded-For": f"10.9.0.{i}"}, verbose=False) for i in range(args.requests)]
        one = visitors[0]
        if args.task == "caption":
            inputs = [handle_file(str(picture)) for picture in pictures]
            settings = {"max_new_tokens": args.tokens, "api_name": "/caption"}
        else:  # seeds apart, the same settings: clips that can share a batch
            inputs = [f"a tune, take {i}" for i in range(args.requests)]
            settings = {"duration": args.seconds, "seed": 1, "api_name": "/generate_music"}
        one.predict(inputs[0], **settings)  # load the model

        def together() -> float:
            started = time.perf_counter()
            jobs = [v.submit(value, **settings) for v, value in zip(visitors, inputs)]
            stats = [" ".join(map(str, job.result(timeout=600))) for job in jobs]
            seconds = time.perf_counter() - started
            shared = sum("one pass with" in line for line in stats)
            print(f"  together: {seconds:.2f} s, {shared} of {len(jobs)} shared a pass")
            return seconds

        def in_a_row() -> float:
            started = time.perf_counter()
            for value in inputs:
                one.predict(value, **settings)
            seconds = time.perf_counter() - started
            print(f"  one at a time: {seconds:.2f} s")
            return seconds

        batched, single = [], []
        for _ in range(args.rounds):
            single.append(in_a_row())
            batched.append(together())
    ratio = statistics.median(single) / statistics.median(batched)
    print(f"{args.task} requests/s one at a time: {args.requests / statistics.median(single):.2f}; "
          f"batched: {args.requests / statistics.median(batched):.2f}")
    target = "  (target >= 2)" if args.task == "caption" else ""
    print(f"batching ratio (throughput batched / one at a time): {ratio:.2f}{target}")


if __name__ == "__main__":
    main()

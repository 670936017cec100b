"""Per-request randomness: a seed reproduces its samples whatever else the server samples meanwhile.

Chat runs in its own queue, beside the device queue music runs in, so chats sample while music does.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from modules.memory import MemoryManager
from modules.tiny import build_tiny_catalog
from modules.wrappers import build_wrapper
from modules.wrappers.base import HostSettings
from tests.conftest import AppServer
from tests.test_music import music, wav_of

CHATTERS = 3


@pytest.mark.parametrize(
    ("task", "model", "sample"),
    [
        ("chat", "tiny-chat", lambda w, _: w.generate("hello", temperature=1.0, max_new_tokens=8)),
        ("music", "tiny-musicgen", lambda w, _: w.generate("calm piano", duration=1, seed=3)),
        ("caption", "tiny-blip", lambda w, image: w.generate(image, decoding="nucleus", max_length=8)),
    ],
)
def test_sampling_wrappers_leave_the_global_generator_alone(task: str, model: str, sample, tmp_path: Path) -> None:
    import torch

    wrapper = build_wrapper(
        build_tiny_catalog().tasks[task].get(model), MemoryManager("cpu"), host=HostSettings(output_dir=tmp_path)
    )
    image = tmp_path / "grey.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(image)
    list(sample(wrapper, str(image)))  # loads the model (initialising a model may draw random numbers)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    list(sample(wrapper, str(image)))
    assert torch.equal(torch.get_rng_state(), before), f"{task} drew from torch's global generator"


def test_chats_running_meanwhile_leave_a_music_seed_reproducible(tiny_app: AppServer) -> None:
    alone, _ = wav_of(music(tiny_app.client(), "calm jazz", duration=3, seed=11).result(timeout=120))

    music_done = threading.Event()
    chats_finished: list[float] = []  # when each chat reply ended
    errors: list[BaseException] = []

    def chat_until_music_is_done() -> None:
        client = Client(tiny_app.url, verbose=False)
        try:
            while not music_done.is_set():
                # Sampled chat (temperature 1), long enough to sample throughout a music step or two.
                client.submit(
                    "tell me a story", model="tiny-chat", temperature=1.0, top_p=1.0, max_new_tokens=64, api_name="/chat"
                ).result(timeout=300)
                chats_finished.append(time.monotonic())
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    chatters = [threading.Thread(target=chat_until_music_is_done) for _ in range(CHATTERS)]
    for thread in chatters:
        thread.start()
    try:
        while not chats_finished and not errors:  # chat is under way before music starts
            time.sleep(0.05)
        started = time.monotonic()
        together, _ = wav_of(music(tiny_app.client(), "calm jazz", duration=3, seed=11).result(timeout=300))
        ended = time.monotonic()
    finally:
        music_done.set()
        for thread in chatters:
            thread.join(timeout=120)
    assert not errors, errors
    assert any(started < t < ended for t in chats_finished), "no chat finished while the music was generated"
    assert np.array_equal(together, alone), "chats sampling meanwhile changed what the music seed produced"

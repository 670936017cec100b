"""Faults stay contained: a broken model fails only its own tab, and a vanished client frees its model."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from gradio_client import Client, handle_file
from PIL import Image

from modules.tiny import build_tiny_catalog
from tests.conftest import AppServer, model_row
from tests.test_music import music

CORRUPT, MISSING = "corrupt-blip", "missing-sd"


def entry(model_id: str, name: str, wrapper: str, path: Path, **defaults: object) -> dict:
    return {
        "id": model_id, "name": name, "wrapper": wrapper, "source": {"path": str(path)},
        "license": "random weights", "defaults": defaults,
    }


def broken_catalogue(folder: Path) -> Path:
    """Chat and music work; the captioner's weights are truncated; the image model's folder is gone."""
    tiny = {task: group.models[0] for task, group in build_tiny_catalog().tasks.items()}
    corrupt = folder / CORRUPT
    shutil.copytree(tiny["caption"].source.path, corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    tasks = {
        "chat": {"default": "tiny-chat", "models": [entry("tiny-chat", "Tiny Llama", "transformers-chat", tiny["chat"].source.path)]},
        "music": {"default": "tiny-musicgen", "models": [entry("tiny-musicgen", "Tiny MusicGen", "transformers-musicgen", tiny["music"].source.path)]},
        "caption": {"default": CORRUPT, "models": [entry(CORRUPT, "Corrupt BLIP", "blip-captioning", corrupt, max_length=8)]},
        "image": {
            "default": MISSING,
            "models": [entry(MISSING, "Missing SD", "diffusers-text-to-image", folder / "nowhere", num_steps=2, width=64, height=64)],
        },
    }
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"tasks": tasks}))
    return path


@pytest.fixture(scope="module")
def broken_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    folder = tmp_path_factory.mktemp("broken")
    with AppServer(["--models", str(broken_catalogue(folder))], folder) as server:
        yield server


def chat(client: Client) -> str:
    reply, _ = client.submit("hello", model="tiny-chat", temperature=0.0, max_new_tokens=4, api_name="/chat").result(timeout=120)
    return reply


def test_broken_models_fail_only_their_own_tab_and_memory_stays_right(broken_app: AppServer, tmp_path: Path) -> None:
    client = broken_app.client()
    image = tmp_path / "grey.png"
    Image.new("RGB", (32, 32), (128, 128, 128)).save(image)
    for _ in range(2):  # and again: a failed load leaves nothing half-done behind
        with pytest.raises(Exception, match="Corrupt BLIP could not be loaded"):
            client.predict(handle_file(str(image)), model=CORRUPT, api_name="/caption")
        with pytest.raises(Exception, match="Missing SD: no model files at"):
            client.predict("a cat", model=MISSING, api_name="/generate_image")
    assert chat(client)
    result = music(client, "piano", duration=1).result(timeout=300)
    assert result[-1], "music made no file"
    rows = {row["key"]: row for row in client.predict(api_name="/system_status")}
    for key in (f"caption/{CORRUPT}", f"image/{MISSING}"):
        assert (rows[key]["state"], rows[key]["in use"], rows[key]["bytes"]) == ("not loaded", 0, 0), rows[key]
    for key in ("chat/tiny-chat", "music/tiny-musicgen"):
        assert rows[key]["state"] == "on device" and rows[key]["in use"] == 0
    memory = client.predict(api_name="/system_memory")
    assert memory["used"] == sum(row["bytes"] for row in rows.values() if row["state"] == "on device") > 0


MUSIC_CLIENT = """
import sys
import time
from gradio_client import Client
client = Client(sys.argv[1], verbose=False)
job = client.submit("a long piece", model="tiny-musicgen", seed=1, duration=30, api_name="/generate_music")
while not any(isinstance(output[1], str) and output[1].startswith("Generating") for output in job.outputs()):
    if job.done():
        sys.exit(f"the music request ended before it streamed: {job.outputs()!r}")
    time.sleep(0.02)
print("generating", flush=True)
job.result()
"""


def test_a_client_that_vanishes_mid_generation_frees_its_model(tiny_app: AppServer) -> None:
    """Gradio notices the closed connection and closes the handler at its next yield (the music tab yields
    every second of audio), which stops the generation and ends the lease, as Stop does."""
    client = tiny_app.client()
    key = "music/tiny-musicgen"
    music_files = set((tiny_app.outputs / "music").glob("*.wav"))
    vanishing = subprocess.Popen([sys.executable, "-c", MUSIC_CLIENT, tiny_app.url], stdout=subprocess.PIPE, text=True)
    try:
        assert vanishing.stdout.readline().strip() == "generating"
        assert model_row(client, key)["in use"] == 1
        vanishing.kill()  # its connections close without a word: no Stop, no cancel
        vanishing.wait()
        gone = time.monotonic()
        deadline = gone + 120  # a hang guard; the release itself comes at the handler's next yield
        while model_row(client, key)["in use"] != 0:
            assert time.monotonic() < deadline, "the lease outlived the client by 2 minutes"
            time.sleep(0.05)
        released = time.monotonic() - gone
    finally:
        vanishing.kill()
    print(f"lease released {released:.2f} s after the client vanished")
    assert set((tiny_app.outputs / "music").glob("*.wav")) == music_files, "the 30 s piece ran to its end"

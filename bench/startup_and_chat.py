"""Issue 2's benchmark, measured side by side in one run (ratios, not timed assertions).

(a) start-up: seconds until the app serves with no model loaded, as a ratio to a bare one-tab Gradio app;
(b) chat tokens/s through the app (gradio_client on loopback) as a ratio to a raw `model.generate` on the
    same embedded model, prompt and greedy settings;
(c) time to the first token through the app.

Run: .venv/bin/python bench/startup_and_chat.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import AppServer, free_port  # noqa: E402

BARE_APP = """
import sys, gradio as gr
with gr.Blocks() as demo:
    with gr.Tab("Chat"):
        gr.ChatInterface(lambda message, history: message)
demo.launch(server_port=int(sys.argv[1]))
"""
PROMPT = "Write a haiku about the ocean."
MAX_NEW_TOKENS = 64
RUNS = 3


def seconds_until_serving(command: list[str], url: str) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                time.sleep(0.05)
    finally:
        process.terminate()
        process.wait()


def startup_ratio(workdir: Path) -> tuple[float, float]:
    bare_script = workdir / "bare_app.py"
    bare_script.write_text(BARE_APP)
    bare, ours = [], []
    for _ in range(RUNS):  # interleaved, so drift on a noisy machine hits both alike
        port = free_port()
        bare.append(seconds_until_serving([sys.executable, str(bare_script), str(port)], f"http://127.0.0.1:{port}/"))
        port = free_port()
        ours.append(
            seconds_until_serving(
                [sys.executable, "app.py", "--port", str(port), "--outputs", str(workdir / "out")],
                f"http://127.0.0.1:{port}/",
            )
        )
    return statistics.median(bare), statistics.median(ours)


def raw_generator(model_id: str) -> Callable[[], float]:
    """A function timing one raw greedy `model.generate` on the embedded model: tokens/s."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from modules.catalog import load_catalog
    from modules.wrappers import wrapper_tasks

    entry = load_catalog(ROOT / "models.yaml", wrapper_tasks()).tasks["chat"].get(model_id)
    folder, name = str(entry.source.local_folder()), entry.source.file
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": PROMPT}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)

    def run() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        return (out.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - started)

    return run


def transformers_catalogue(workdir: Path, model_id: str) -> Path:
    """The shipped catalogue's chat entry pinned to transformers, the backend the raw baseline uses."""
    raw = yaml.safe_load((ROOT / "models.yaml").read_text())
    entry = next(m for m in raw["tasks"]["chat"]["models"] if m["id"] == model_id)
    entry = {key: value for key, value in entry.items() if key != "prefer"} | {"wrapper": "transformers-chat"}
    path = workdir / "transformers-chat.yaml"
    path.write_text(yaml.safe_dump({"tasks": {"chat": {"default": model_id, "models": [entry]}}}))
    return path


def chat_ratio(workdir: Path, model_id: str) -> tuple[float, float, float, float]:
    """Median raw and app tokens/s, the median of per-round ratios, and the app's time to first token.

    Raw and app runs alternate round by round, so drift on a noisy machine hits both alike. App speed is
    as the client sees it: wall clock around one blocking request.
    """
    catalogue = transformers_catalogue(workdir, model_id)
    server = AppServer(["--models", str(catalogue)], workdir, env={"HF_HUB_OFFLINE": "1"})
    try:
        server.wait_until_serving()
        client = server.client()
        settings = {"model": model_id, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": MAX_NEW_TOKENS}
        client.predict(PROMPT, **settings, api_name="/chat")  # load the model once, outside the timing
        raw_run = raw_generator(model_id)
        raw_run()
        raws, apps, firsts = [], [], []
        for _ in range(RUNS + 2):
            raws.append(raw_run())
            # /chat is stateless, so each request is a new single-turn conversation, as the raw run's.
            started = time.perf_counter()
            _reply, note = client.predict(PROMPT, **settings, api_name="/chat")
            tokens = int(note.split(" tokens")[0].split()[-1])
            apps.append(tokens / (time.perf_counter() - started))
            # Time to first token: a separate request, watched until its first streamed text.
            started = time.perf_counter()
            job = client.submit(PROMPT, **settings, api_name="/chat")
            while not [reply for reply, _ in job.outputs() if reply] and not job.done():
                time.sleep(0.01)
            firsts.append(time.perf_counter() - started)
            job.result()
        ratios = [app / raw for app, raw in zip(apps, raws)]
        return statistics.median(raws), statistics.median(apps), statistics.median(ratios), statistics.median(firsts)
    finally:
        server.stop()


def main() -> None:
    from modules.catalog import load_catalog
    from modules.wrappers import wrapper_tasks

    catalog = load_catalog(ROOT / "models.yaml", wrapper_tasks())
    model_id = catalog.tasks["chat"].fallback  # the embedded model: the one every machine has
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bare, ours = startup_ratio(workdir)
        print(f"(a) start-up until serving: bare Gradio {bare:.2f} s, Atelier {ours:.2f} s, ratio {ours / bare:.2f} (target <= 1.3)")
        raw_rate, app_rate, ratio, first = chat_ratio(workdir, model_id)
        print(
            f"(b) chat tokens/s ({model_id}, greedy, {MAX_NEW_TOKENS} new tokens): raw generate {raw_rate:.1f}, "
            f"through Atelier {app_rate:.1f}, ratio {ratio:.2f} (median of per-round ratios; target >= 0.9)"
        )
        print(f"(c) time to first token through Atelier: {first:.2f} s")


if __name__ == "__main__":
    main()

"""Chat tokens/s on the embedded SmolLM2, llama.cpp vs transformers through Atelier, and vs raw llama.cpp.

One app server serves the embedded GGUF twice, once per backend; the same greedy prompt goes to each in
turn, and to llama.cpp called directly in this process, for several rounds (interleaved, so a noisy
machine slows all three alike). Speeds are end to end as a client sees them: tokens / request seconds.

    python bench/chat_backends.py [--rounds 5] [--max-new-tokens N]

Targets (issue 5): llama.cpp / transformers through Atelier >= 4; Atelier llama.cpp / raw llama.cpp >= 0.9.
Each conversation is single-turn and fresh (the /chat API is stateless), and replies run to the
embedded model's default length (its `max_new_tokens` in models.yaml) unless --max-new-tokens says otherwise.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modules.catalog import load_catalog  # noqa: E402
from modules.memory import MemoryManager  # noqa: E402
from modules.wrappers import wrapper_tasks  # noqa: E402
from modules.threads_policy import apply_thread_policy, compute_threads  # noqa: E402
from modules.wrappers.llama_chat import LlamaCppChat  # noqa: E402
from tests.conftest import AppServer  # noqa: E402

PROMPT = "Tell me a long story about a dragon who learns to paint."
SYSTEM = "You are a helpful assistant."
BACKENDS = {"llama.cpp": "llama-cpp-chat", "transformers": "transformers-chat"}
REPORTED = "llama.cpp, as the tab reports"
#: The /chat stats line: "N tokens · X tokens/s · first token ..."
STATS = re.compile(r"(\d+) tokens · ([\d.]+) tokens/s")


def embedded_chat_per_backend(backends: dict[str, str] = BACKENDS) -> dict:
    """The catalogue's `chat` task holding the embedded entry once per backend, its id the wrapper's name."""
    raw = yaml.safe_load((ROOT / "models.yaml").read_text())
    chat = raw["tasks"]["chat"]
    embedded = next(m for m in chat["models"] if m["id"] == chat["fallback"])
    models = []
    for backend, wrapper in backends.items():
        entry = {k: v for k, v in embedded.items() if k != "prefer"}
        models.append({**entry, "id": wrapper, "name": f"{embedded['name']} on {backend}", "wrapper": wrapper})
    return {"default": models[0]["id"], "models": models}


def bench_catalogue(folder: Path) -> Path:
    """The embedded entry twice, one id per backend."""
    path = folder / "models.yaml"
    path.write_text(yaml.safe_dump({"tasks": {"chat": embedded_chat_per_backend()}}))
    return path


def through_atelier(client, model_id: str, max_new_tokens: int) -> tuple[int, float, float]:
    """(tokens, seconds, tokens/s the Chat tab reports) for one greedy reply.

    The seconds are the client's, from submit to the final message, so they include Gradio's fixed cost
    of a request (about 0.1-0.15 s on loopback here, the same for a bare Gradio app); the reported speed
    is the wrapper's own, from the start of generation to its end.
    """
    started = time.perf_counter()
    _reply, note = client.predict(
        PROMPT, model=model_id, system_prompt=SYSTEM, temperature=0.0, top_p=0.9, max_new_tokens=max_new_tokens, api_name="/chat"
    )
    seconds = time.perf_counter() - started
    stats = STATS.search(note)
    return int(stats.group(1)), seconds, float(stats.group(2))


def raw_llama(llm, max_new_tokens: int) -> tuple[int, float]:
    """(tokens, seconds) for the same request straight through llama-cpp-python."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    # No reset: llama-cpp-python reuses the KV cache of the prompt prefix it saw last, for the app's
    # model as for this one, so both skip re-reading the same prompt alike.
    started = time.perf_counter()
    reply = llm.create_chat_completion(messages, temperature=0.0, max_tokens=max_new_tokens)
    return reply["usage"]["completion_tokens"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, help="default: the embedded model's own default")
    args = parser.parse_args()

    apply_thread_policy()  # raw llama.cpp here waits for cores as the app's does
    from llama_cpp import Llama

    catalog = load_catalog(ROOT / "models.yaml", wrapper_tasks())
    entry = catalog.tasks["chat"].get(catalog.tasks["chat"].fallback)
    max_new_tokens = args.max_new_tokens or int(entry.defaults["max_new_tokens"])
    wrapper = LlamaCppChat(entry.model_copy(update={"wrapper": "llama-cpp-chat"}), MemoryManager("cpu"))
    path = wrapper.gguf_path()
    n_ctx = wrapper.context_for({"general.architecture": "llama", "llama.context_length": LlamaCppChat.max_context})
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=compute_threads(), n_threads_batch=compute_threads(), verbose=False)

    with tempfile.TemporaryDirectory() as scratch:
        serve_args = ["--models", str(bench_catalogue(Path(scratch)))]
        with AppServer(serve_args, Path(scratch), env={"HF_HUB_OFFLINE": "1"}) as server:
            client = server.client()
            for model_id in BACKENDS.values():  # load both and warm up, untimed
                through_atelier(client, model_id, 8)
            raw_llama(llm, 8)
            speeds: dict[str, list[float]] = {name: [] for name in ("raw llama.cpp", *BACKENDS, REPORTED)}
            for round_ in range(1, args.rounds + 1):
                runs = {"raw llama.cpp": raw_llama(llm, max_new_tokens)}
                for backend, model_id in BACKENDS.items():
                    *runs[backend], reported = through_atelier(client, model_id, max_new_tokens)
                    if backend == "llama.cpp":
                        speeds[REPORTED].append(reported)
                line = []
                for name, (tokens, seconds) in runs.items():
                    speeds[name].append(tokens / seconds)
                    line.append(f"{name}: {tokens} tokens in {seconds:.2f} s = {tokens / seconds:.1f} tok/s")
                print(f"round {round_}: " + " | ".join(line), flush=True)

    median = {name: statistics.median(values) for name, values in speeds.items()}
    print(f"\nmedian tokens/s over {args.rounds} rounds, {max_new_tokens} new tokens, {compute_threads()} threads:")
    for name, value in median.items():
        print(f"  {name:<28} {value:6.1f}")
    # Also per round: each round's runs follow each other closely, so slow drift on a shared machine
    # cancels in their ratio.
    for label, (faster, slower), target in (
        ("llama.cpp / transformers, both through Atelier", ("llama.cpp", "transformers"), 4),
        ("llama.cpp through Atelier / raw llama.cpp", ("llama.cpp", "raw llama.cpp"), 0.9),
        ("the same, at the speed the Chat tab reports", (REPORTED, "raw llama.cpp"), 0.9),
    ):
        per_round = statistics.median(a / b for a, b in zip(speeds[faster], speeds[slower]))
        print(
            f"{label}: {median[faster] / median[slower]:.2f}x of medians, "
            f"{per_round:.2f}x median per round (target >= {target})"
        )


if __name__ == "__main__":
    main()

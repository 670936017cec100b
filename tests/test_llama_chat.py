"""The llama.cpp chat backend: greedy parity with transformers, the Chat tab's own cases on a real
server, real release on eviction, and the backend choice with and without llama-cpp-python.

Tests marked `needs_llama` are skipped only where llama-cpp-python is not installed; CI installs it for
a second pass. The selection and fallback tests run on both passes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import psutil
import pytest
import yaml
from gradio_client import Client

from modules.catalog import ModelEntry, load_catalog
from modules.memory import MemoryManager
from modules.wrappers import build_wrapper, wrapper_tasks
from modules.wrappers import llama_chat
from modules.wrappers.base import ModelUnavailable
from modules.wrappers.chat import TransformersChat
from modules.wrappers.llama_chat import LlamaCppChat, llama_cpp_installed
from tests.conftest import ROOT, AppServer
from tests.test_chat import (  # the transformers path's own end-to-end cases, rerun here on llama.cpp
    EMBEDDED,
    chat,
    test_bad_input_gets_a_clear_error_and_the_server_keeps_serving,
    test_embedded_model_streams_a_reply_with_its_speed,
    test_greedy_replies_repeat_and_context_carries,
    test_stop_ends_generation_and_releases_the_lease,
    test_system_tab_unloads_a_model,
    test_unavailable_model_falls_back_to_the_embedded_one,
)

needs_llama = pytest.mark.skipif(
    not llama_cpp_installed(), reason="llama-cpp-python is not installed (`make run LLAMA=1` or CI's llama pass)"
)
SHIPPED = load_catalog(ROOT / "models.yaml", wrapper_tasks())


def embedded_entry(wrapper: str) -> ModelEntry:
    """The shipped embedded SmolLM2 entry, pinned to one backend (its id names the backend)."""
    entry = SHIPPED.tasks["chat"].get(EMBEDDED)
    return entry.model_copy(update={"id": f"{entry.id}-{wrapper}", "wrapper": wrapper, "prefer": ()})


@pytest.fixture(scope="module")
def embedded_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The shipped catalogue with the embedded model pinned to llama.cpp, the hub switched off."""
    if not llama_cpp_installed():
        pytest.skip("llama-cpp-python is not installed (`make run LLAMA=1` or CI's llama pass)")
    workdir = tmp_path_factory.mktemp("llama-app")
    raw = yaml.safe_load((ROOT / "models.yaml").read_text())
    for model in raw["tasks"]["chat"]["models"]:
        if model["id"] == EMBEDDED:
            model["wrapper"] = "llama-cpp-chat"
            model.pop("prefer", None)
    catalogue = workdir / "models.yaml"
    catalogue.write_text(yaml.safe_dump(raw))
    with AppServer(["--models", str(catalogue)], workdir, env={"HF_HUB_OFFLINE": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def client(embedded_app: AppServer) -> Client:
    return embedded_app.client()


# -- the backend choice -------------------------------------------------------------------------------


def test_embedded_model_prefers_llama_cpp_on_cpu_where_installed() -> None:
    wrapper = build_wrapper(SHIPPED.tasks["chat"].get(EMBEDDED), MemoryManager("cpu"))
    if llama_cpp_installed():
        assert isinstance(wrapper, LlamaCppChat) and wrapper.entry.wrapper == "llama-cpp-chat"
        assert wrapper.backend_note == "llama.cpp."
    else:
        assert isinstance(wrapper, TransformersChat)
        assert "llama.cpp is not used: llama-cpp-python is not installed" in (wrapper.backend_note or "")


def test_without_llama_cpp_the_embedded_model_falls_back_to_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama_chat, "llama_cpp_installed", lambda: False)
    wrapper = build_wrapper(SHIPPED.tasks["chat"].get(EMBEDDED), MemoryManager("cpu"))
    assert isinstance(wrapper, TransformersChat) and wrapper.entry.wrapper == "transformers-chat"
    assert wrapper.backend_note and wrapper.backend_note.startswith("transformers (llama.cpp is not used")
    assert "make run LLAMA=1" in wrapper.backend_note
    pinned = LlamaCppChat(embedded_entry("llama-cpp-chat"), MemoryManager("cpu"))
    with pytest.raises(ModelUnavailable, match="make run LLAMA=1"):
        pinned.load("cpu")


def test_on_an_accelerator_the_embedded_model_keeps_transformers() -> None:
    wrapper = build_wrapper(SHIPPED.tasks["chat"].get(EMBEDDED), MemoryManager("cuda"))
    assert isinstance(wrapper, TransformersChat)
    if llama_cpp_installed():
        assert "llama.cpp is not used: the device is cuda" in (wrapper.backend_note or "")


# -- the model itself ---------------------------------------------------------------------------------


@needs_llama
def test_greedy_decoding_gives_the_same_first_20_tokens_on_both_backends() -> None:
    """Same GGUF, same prompt ids; llama.cpp multiplies with 8-bit activations, transformers in fp32.

    So a near-tie can flip: for "Write a haiku about the ocean." the 9th token's top two logits are
    0.047 apart in transformers and llama.cpp picks the other one. This prompt (a Chat tab example) has
    no such tie in its first 24 tokens.
    """
    manager = MemoryManager("cpu")
    llama = LlamaCppChat(embedded_entry("llama-cpp-chat"), manager)
    transformers = TransformersChat(embedded_entry("transformers-chat"), manager)
    replies = {}
    for wrapper in (llama, transformers):
        *_, done = wrapper.generate(
            "Explain what a GPU does, in two sentences.", temperature=0.0, max_new_tokens=24
        )
        assert done.done and done.tokens == 24, f"{wrapper.backend}: {done}"
        replies[wrapper.backend] = done.text
    with manager.use(transformers) as model:  # one tokenizer for both texts
        ids = {backend: model.tokenizer(text, add_special_tokens=False)["input_ids"] for backend, text in replies.items()}
    assert len(ids["transformers"]) >= 20, replies
    assert ids["llama.cpp"][:20] == ids["transformers"][:20], replies


@needs_llama
def test_footprint_is_the_gguf_plus_its_kv_cache_and_eviction_really_frees_it() -> None:
    manager = MemoryManager("cpu")
    wrapper = LlamaCppChat(embedded_entry("llama-cpp-chat"), manager)
    gguf = wrapper.gguf_path().stat().st_size
    estimate = wrapper.estimate_bytes()
    # SmolLM2-135M: 30 layers x 3 KV heads x (64 + 64) values x 2 bytes, for an 8192-token context
    assert estimate == gguf + 8192 * 30 * 3 * 128 * 2
    *_, done = wrapper.generate("Say hi.", temperature=0.0, max_new_tokens=8)
    assert done.text.strip() and 1 <= done.tokens <= 8
    (status,) = manager.status()
    assert status.state.value == "on device" and status.bytes == estimate and manager.used_bytes() == estimate

    gc.collect()
    before = psutil.Process().memory_info().rss
    manager.unload(wrapper.key)
    after = psutil.Process().memory_info().rss
    assert manager.last_drop_freed, "something still references the llama.cpp model"
    assert manager.used_bytes() == 0
    assert before - after >= gguf / 2, f"RSS fell by {(before - after) / 2**20:.0f} MiB; the GGUF is {gguf / 2**20:.0f} MiB"


# -- the Chat tab on llama.cpp, through a real server ---------------------------------------------------


@needs_llama
def test_the_chat_tab_reports_the_llama_cpp_backend(client: Client) -> None:
    text, note, _ = chat(client, "Say hi.", max_new_tokens=8)
    assert text.strip() and note.endswith("(llama.cpp)"), note


# The transformers path's cases, imported above, run here against this module's `client`: the shipped
# catalogue with the embedded model on llama.cpp (streaming, greedy repeat, stop, fallback, bad input,
# unload). Keep them referenced so linters see the imports are used.
REUSED = (
    test_embedded_model_streams_a_reply_with_its_speed,
    test_greedy_replies_repeat_and_context_carries,
    test_stop_ends_generation_and_releases_the_lease,
    test_unavailable_model_falls_back_to_the_embedded_one,
    test_bad_input_gets_a_clear_error_and_the_server_keeps_serving,
    test_system_tab_unloads_a_model,
)

"""Chat end to end: the real app on loopback, the real embedded SmolLM2, driven by gradio_client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gradio_client import Client

from modules.catalog import load_catalog
from modules.wrappers import wrapper_tasks
from tests.conftest import ROOT, AppServer, model_row

CATALOG = load_catalog(ROOT / "models.yaml", wrapper_tasks())
EMBEDDED = CATALOG.tasks["chat"].fallback
SYSTEM = "You are a helpful assistant."


@pytest.fixture(scope="module")
def embedded_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The shipped catalogue with the hub switched off: only the embedded model can load."""
    with AppServer([], tmp_path_factory.mktemp("embedded-app"), env={"HF_HUB_OFFLINE": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def client(embedded_app: AppServer) -> Client:
    return embedded_app.client()


def chat(
    client: Client, message: str, model: str = EMBEDDED, history: object = None, **settings: float
) -> tuple[str, str, list]:
    """Send one message; return the reply text, its stats note and every streamed (reply, stats) output."""
    job = client.submit(
        message,
        history=history,
        model=model,
        system_prompt=SYSTEM,
        temperature=settings.get("temperature", 0.0),
        top_p=settings.get("top_p", 0.9),
        max_new_tokens=settings.get("max_new_tokens", 24),
        api_name="/chat",
    )
    reply, note = job.result(timeout=300)
    return reply, note, job.outputs()


def test_embedded_model_streams_a_reply_with_its_speed(client: Client) -> None:
    text, note, outputs = chat(client, "Write a haiku about the ocean.", max_new_tokens=32)
    assert text.strip(), "the reply is empty"
    streamed = [reply for reply, _ in outputs if reply]
    assert len(streamed) >= 3, f"expected a stream of partial replies, got {outputs!r}"
    assert all(later.startswith(earlier) for earlier, later in zip(streamed, streamed[1:])), "stream is not incremental"
    assert "tokens/s" in note and "first token" in note and "SmolLM2" in note
    state = model_row(client, f"chat/{EMBEDDED}")
    assert state["state"] == "on device" and state["in use"] == 0 and state["loads"] == 1


def test_greedy_replies_repeat_and_context_carries(client: Client) -> None:
    first, _, _ = chat(client, "Name a colour.", max_new_tokens=12)
    again, _, _ = chat(client, "Name a colour.", max_new_tokens=12)
    assert first == again
    # The API is stateless: earlier turns travel in `history`, and the model sees them.
    turns = [{"role": "user", "content": "My favourite colour is green."}, {"role": "assistant", "content": "Noted: green."}]
    informed, _, _ = chat(client, "Name a colour.", history=turns, max_new_tokens=12)
    assert informed.strip() and informed != first, "the earlier turns did not reach the model"
    with pytest.raises(Exception, match="expected a list of"):
        chat(client, "Name a colour.", history=["not a turn"])


def test_stop_ends_generation_and_releases_the_lease(client: Client) -> None:
    job = client.submit(
        "Tell me a very long story about a dragon.", model=EMBEDDED, temperature=0.7, top_p=0.95, max_new_tokens=2000, api_name="/chat"
    )
    deadline = time.monotonic() + 120
    while len([reply for reply, _ in job.outputs() if reply]) < 3:
        assert time.monotonic() < deadline, "no streamed output before the deadline"
        time.sleep(0.05)
    job.cancel()
    key = f"chat/{EMBEDDED}"
    deadline = time.monotonic() + 30
    while model_row(client, key)["in use"] != 0:
        assert time.monotonic() < deadline, "the lease was not released after Stop"
        time.sleep(0.2)
    streamed_when_released = len(job.outputs())
    time.sleep(1.0)
    assert len(job.outputs()) == streamed_when_released, "generation went on after Stop"
    text, _, _ = chat(client, "Say hi.", max_new_tokens=8)  # and the server still serves
    assert text.strip()


def test_unavailable_model_falls_back_to_the_embedded_one(client: Client) -> None:
    text, note, _ = chat(client, "Say hi.", model="smollm2-1.7b", max_new_tokens=8)
    assert text.strip()
    assert "SmolLM2 1.7B Instruct is not available here" in note and CATALOG.tasks["chat"].get(EMBEDDED).name in note


@pytest.mark.parametrize(
    ("message", "model", "settings", "expected"),
    [
        ("", EMBEDDED, {}, "message is empty"),
        ("   ", EMBEDDED, {}, "message is empty"),
        ("x" * 200_000, EMBEDDED, {}, "message is 200,000 characters; the limit on this server is 10,000"),
        ("hi", EMBEDDED, {"temperature": 5.0}, "greater than maximum value 2.0"),
        ("hi", EMBEDDED, {"temperature": -1.0}, "less than minimum value 0"),
        ("hi", EMBEDDED, {"max_new_tokens": 0}, "less than minimum value 1"),
        ("hi", EMBEDDED, {"max_new_tokens": 100_000}, "greater than maximum value 4096"),
        ("hi", "org/any-model-from-the-browser", {}, "not in the list of choices"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(
    client: Client, message: str, model: str, settings: dict, expected: str
) -> None:
    with pytest.raises(Exception) as caught:
        chat(client, message, model=model, **settings)
    assert expected in str(caught.value)
    text, _, _ = chat(client, "Say hi.", max_new_tokens=4)
    assert text.strip()


def test_system_tab_unloads_a_model(client: Client) -> None:
    chat(client, "Say hi.", max_new_tokens=2)
    key = f"chat/{EMBEDDED}"
    assert model_row(client, key)["state"] == "on device"
    client.predict(key, api_name="/unload_model")
    assert model_row(client, key)["state"] == "not loaded"
    with pytest.raises(Exception, match="unknown model"):
        client.predict("chat/nope", api_name="/unload_model")
    text, _, _ = chat(client, "Say hi.", max_new_tokens=4)  # loads again on the next use
    assert text.strip() and model_row(client, key)["loads"] == 2


def test_tiny_app_chats_on_a_random_weight_model(tiny_client: Client) -> None:
    reply, note = tiny_client.predict(
        "hello", model="tiny-chat", temperature=0.0, top_p=1.0, max_new_tokens=16, api_name="/chat"
    )
    assert reply and "Tiny Llama" in note and "16 tokens" in note


def test_auth_protects_the_app(tmp_path: Path) -> None:
    with AppServer(["--tiny", "--auth", "ada:lovelace"], tmp_path) as server:
        with pytest.raises(Exception):
            Client(server.url, verbose=False)
        authed = Client(server.url, auth=("ada", "lovelace"), verbose=False)
        assert authed.predict(api_name="/system_status")


def test_a_turn_marked_not_answered_never_reaches_the_model() -> None:
    from modules.tabs.chat import not_answered, plain_history

    failed = not_answered("the message is too long")
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "assistant", "content": "3 tokens", "metadata": {"title": "3 tokens · 9 tokens/s"}},
        {"role": "user", "content": "x" * 50},
        {"role": failed.role, "content": failed.content, "metadata": failed.metadata},
    ]
    assert plain_history(history) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

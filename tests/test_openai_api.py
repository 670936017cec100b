"""The OpenAI-compatible API (/v1) end to end: the official `openai` client against real servers on loopback.

Chat runs on the shipped embedded SmolLM2 (real text, so stop strings and streaming mean something): on
transformers where llama-cpp-python is absent, on llama.cpp where it is installed (the catalogue prefers
it on CPU). Images run on the tiny random-weight Stable Diffusion of `--tiny`.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import openai
import pytest
from gradio_client import Client
from openai import OpenAI
from PIL import Image

from modules.api.errors import APIError
from modules.api.running import DeviceTurn
from modules.catalog import load_catalog
from modules.serving import FairQueue, Serving
from modules.wrappers import wrapper_tasks
from tests.conftest import ROOT, AppServer, model_row

CATALOG = load_catalog(ROOT / "models.yaml", wrapper_tasks())
EMBEDDED = CATALOG.tasks["chat"].fallback
KEY = "sk-test-key"
STORY = [{"role": "user", "content": "Tell me a long story about a dragon."}]
#: How long a request may take before the test calls it hung: a first request loads the model, and CI
#: machines may be busy (a load average of 30 made one take over 5 minutes). A bound, not a speed target.
HANG_SECONDS = 900


@pytest.fixture(scope="module")
def chat_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The shipped catalogue, hub off, with an API key (so /v1 needs it even without --auth)."""
    with AppServer(["--api-key", KEY], tmp_path_factory.mktemp("openai-chat"), env={"HF_HUB_OFFLINE": "1"}) as server:
        yield server


@pytest.fixture(scope="module")
def chat_api(chat_app: AppServer) -> OpenAI:
    return OpenAI(base_url=f"{chat_app.url}v1", api_key=KEY, max_retries=0, timeout=HANG_SECONDS)


@pytest.fixture(scope="module")
def tiny_api(tiny_app: AppServer) -> OpenAI:
    """The open tiny app (no --auth, no keys): the client's key is ignored."""
    return OpenAI(base_url=f"{tiny_app.url}v1", api_key="unused", max_retries=0, timeout=HANG_SECONDS)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The embedded model's own tokenizer, read from its GGUF by transformers."""
    from transformers import AutoTokenizer

    source = CATALOG.tasks["chat"].get(EMBEDDED).source
    return AutoTokenizer.from_pretrained(str(source.local_folder()), gguf_file=source.file)


def reply(api: OpenAI, messages: list[dict[str, str]] = STORY, **settings: Any) -> Any:
    settings.setdefault("temperature", 0)
    return api.chat.completions.create(model=EMBEDDED, messages=messages, **settings)


def streamed(api: OpenAI, messages: list[dict[str, str]] = STORY, **settings: Any) -> list[Any]:
    settings.setdefault("temperature", 0)
    return list(api.chat.completions.create(model=EMBEDDED, messages=messages, stream=True, **settings))


def text_of(chunks: list[Any]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


# -- models ------------------------------------------------------------------------------------------


def test_models_lists_the_chat_and_image_catalogue(tiny_api: OpenAI) -> None:
    models = tiny_api.models.list().data
    assert {(model.id, model.object, model.owned_by) for model in models} == {
        ("tiny-chat", "model", "atelier"),
        ("tiny-sd", "model", "atelier"),
    }
    assert tiny_api.models.retrieve("tiny-sd").id == "tiny-sd"


# -- chat --------------------------------------------------------------------------------------------


def test_chat_reply_counts_tokens_as_the_tokenizer_does(chat_api: OpenAI, tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "You are a storyteller."}, *STORY]
    response = reply(chat_api, messages, max_tokens=8)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.model == EMBEDDED
    assert choice.message.role == "assistant" and choice.message.content.strip()
    templated = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert response.usage.prompt_tokens == len(templated)
    # A story does not end within 8 tokens: max_tokens ends it, and exactly that many were generated.
    assert choice.finish_reason == "length" and response.usage.completion_tokens == 8
    assert response.usage.total_tokens == len(templated) + 8


def test_stream_deltas_add_up_to_the_whole_reply(chat_api: OpenAI) -> None:
    whole = reply(chat_api, max_tokens=24)
    chunks = streamed(chat_api, max_tokens=24, stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]) >= 3, "not streamed"
    assert text_of(chunks) == whole.choices[0].message.content
    finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(chunk.id == chunks[0].id for chunk in chunks)


def test_a_stop_string_ends_the_reply_on_the_token_that_completes_it(chat_api: OpenAI) -> None:
    full = reply(chat_api, max_tokens=40).choices[0].message.content
    stop = " " + full.split()[4]  # a word well inside the reply
    expected = full[: full.index(stop)]
    response = reply(chat_api, max_tokens=40, stop=[stop, "never-generated"])
    assert response.choices[0].message.content == expected
    assert response.choices[0].finish_reason == "stop"
    assert text_of(streamed(chat_api, max_tokens=40, stop=stop)) == expected, "the stream let part of the stop string out"
    # Exactly the tokens that first spell the stop string were generated: one fewer does not spell it.
    generated = response.usage.completion_tokens
    assert stop in reply(chat_api, max_tokens=generated).choices[0].message.content
    assert stop not in reply(chat_api, max_tokens=generated - 1).choices[0].message.content


def test_a_seed_repeats_a_sampled_reply(chat_api: OpenAI) -> None:
    def sample(seed: int) -> str:
        return reply(chat_api, temperature=1.0, top_p=1.0, seed=seed, max_tokens=16).choices[0].message.content

    first = sample(7)
    assert sample(7) == first
    assert sample(8) != first


def test_closing_a_stream_stops_generation_and_releases_the_lease(chat_app: AppServer, chat_api: OpenAI) -> None:
    page = chat_app.client()
    key = f"chat/{EMBEDDED}"
    stream = chat_api.chat.completions.create(
        model=EMBEDDED, messages=STORY, stream=True, temperature=0.7, max_tokens=2000
    )
    words = 0
    for chunk in stream:
        words += bool(chunk.choices and chunk.choices[0].delta.content)
        if words == 3:
            break
    assert model_row(page, key)["in use"] == 1, "the model should be serving the open stream"
    stream.close()
    wait_until_idle(page, key)
    assert reply(chat_api, max_tokens=4).choices[0].message.content  # and the API still serves


def wait_until_idle(page: Client, key: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while model_row(page, key)["in use"] != 0:
        assert time.monotonic() < deadline, "the lease was not released after the stream was closed"
        time.sleep(0.05)


def test_a_model_without_its_files_is_unavailable_not_swapped(chat_api: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        chat_api.chat.completions.create(model="smollm2-1.7b", messages=STORY, max_tokens=4)
    assert caught.value.status_code == 503 and caught.value.code == "model_unavailable"
    assert "hf download HuggingFaceTB/SmolLM2-1.7B-Instruct" in caught.value.message


def test_api_requests_wait_in_the_fair_queue_and_are_refused_beyond_its_size() -> None:
    async def scenario() -> list[str]:
        serving = Serving(FairQueue(max_waiting=1))
        order: list[str] = []
        first = DeviceTurn(serving, "key:a", "chat:x")
        await first.acquire()

        async def second() -> None:
            async with DeviceTurn(serving, "key:b", "chat:x").held():
                order.append("second ran")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(second)
            while serving.queue.state().waiting == 0:  # `second` joins from a worker thread
                await anyio.sleep(0.01)
            with pytest.raises(APIError) as caught:
                await DeviceTurn(serving, "key:c", "chat:x").acquire()
            assert caught.value.status == 429 and caught.value.code == "queue_full"
            order.append("first done")
            first.release()
        return order

    assert anyio.run(scenario) == ["first done", "second ran"]


# -- errors --------------------------------------------------------------------------------------------

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"temperature": -1}, "temperature"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"n": 2}, "n"),
        ({"seed": -5}, "seed"),
        ({"stop": [""]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages"),
        ({"messages": [{"role": "user", "content": "x" * 10_001}]}, "messages[0].content"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [*HELLO, {"role": "assistant", "content": "Hi"}]}, "messages"),
        ({"messages": [*HELLO, {"role": "system", "content": "Be brief."}, *HELLO]}, "messages[1].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content"),
    ],
)
def test_bad_chat_input_is_a_400_naming_the_field(tiny_api: OpenAI, settings: dict[str, Any], param: str) -> None:
    request = {"model": "tiny-chat", "messages": HELLO} | settings
    with pytest.raises(openai.BadRequestError) as caught:
        tiny_api.chat.completions.create(**request)
    assert caught.value.status_code == 400 and caught.value.param == param, caught.value.message
    assert caught.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    ("settings", "param"),
    [
        ({"size": "13x7"}, "size"),
        ({"size": "big"}, "size"),
        ({"size": "4096x4096"}, "size"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"prompt": ""}, "prompt"),
        ({"response_format": "jpeg"}, "response_format"),
    ],
)
def test_bad_image_input_is_a_400_naming_the_field(tiny_api: OpenAI, settings: dict[str, Any], param: str) -> None:
    request = {"model": "tiny-sd", "prompt": "a red cube"} | settings
    with pytest.raises(openai.BadRequestError) as caught:
        tiny_api.images.generate(**request)
    assert caught.value.status_code == 400 and caught.value.param == param, caught.value.message


def test_an_unknown_model_is_a_404(tiny_api: OpenAI) -> None:
    for call in (
        lambda: tiny_api.chat.completions.create(model="gpt-4o", messages=HELLO),
        lambda: tiny_api.chat.completions.create(model="tiny-sd", messages=HELLO),  # not a chat model
        lambda: tiny_api.images.generate(model="dall-e-3", prompt="a cube"),
        lambda: tiny_api.models.retrieve("gpt-4o"),
    ):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert caught.value.code == "model_not_found" and caught.value.param == "model"


def test_errors_keep_openais_shape_for_malformed_requests(tiny_app: AppServer) -> None:
    for response in (
        httpx.post(f"{tiny_app.url}v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"}),
        httpx.get(f"{tiny_app.url}v1/no-such-route"),
    ):
        assert response.status_code in (400, 404)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


# -- images --------------------------------------------------------------------------------------------


def pixels(png: bytes) -> tuple[tuple[int, int], bytes]:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.size, image.tobytes()


def test_images_come_back_as_pngs_of_the_asked_size_and_number(tiny_api: OpenAI) -> None:
    response = tiny_api.images.generate(
        model="tiny-sd", prompt="a red cube", n=2, size="72x64", response_format="b64_json", extra_body={"seed": 5}
    )
    images = [pixels(base64.b64decode(item.b64_json)) for item in response.data]
    assert [size for size, _ in images] == [(72, 64), (72, 64)]
    assert images[0][1] != images[1][1], "image 2 of a batch uses the next seed"
    again = tiny_api.images.generate(
        model="tiny-sd", prompt="a red cube", n=1, size="72x64", response_format="b64_json", extra_body={"seed": 5}
    )
    assert pixels(base64.b64decode(again.data[0].b64_json)) == images[0], "the same seed makes the same image"


def test_image_urls_are_served_from_the_outputs_images_only(tiny_app: AppServer, tiny_api: OpenAI) -> None:
    response = tiny_api.images.generate(model="tiny-sd", prompt="a blue cube", size="64x64", response_format="url")
    (item,) = response.data
    assert item.url.startswith(f"{tiny_app.url}v1/files/images/")
    fetched = httpx.get(item.url)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    name = item.url.rsplit("/", 1)[1]
    assert fetched.content == (tiny_app.outputs / "images" / name).read_bytes()
    assert pixels(fetched.content)[0] == (64, 64)
    outside = tiny_app.outputs / "secret.png"
    outside.write_bytes(fetched.content)
    for path in ("..%2Fsecret.png", "%2E%2E%2Fsecret.png", "..%2F..%2Fapp.py", "nothing.png", "..", "%2Fetc%2Fpasswd"):
        refused = httpx.get(f"{tiny_app.url}v1/files/images/{path}")
        assert refused.status_code == 404 and "error" in refused.json(), path


# -- access --------------------------------------------------------------------------------------------


def test_without_auth_or_keys_the_api_is_as_open_as_the_page(tiny_app: AppServer) -> None:
    assert httpx.get(f"{tiny_app.url}v1/models").status_code == 200


def test_a_key_given_without_auth_is_required(chat_app: AppServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        OpenAI(base_url=f"{chat_app.url}v1", api_key="sk-wrong", max_retries=0).models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    missing = httpx.get(f"{chat_app.url}v1/models")  # the openai client refuses to send no key at all
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"


@pytest.fixture(scope="module")
def auth_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """--auth for the page, keys from both the flag and the environment for /v1."""
    args = ["--tiny", "--auth", "me:secret", "--api-key", "sk-flag-1,sk-flag-2"]
    with AppServer(args, tmp_path_factory.mktemp("openai-auth"), env={"ATELIER_API_KEYS": "sk-env"}) as server:
        yield server


def test_with_auth_the_api_wants_a_host_key(auth_app: AppServer) -> None:
    base = f"{auth_app.url}v1"
    refused = httpx.get(f"{base}/models")
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}
    for wrong in ("sk-wrong", "me:secret"):
        with pytest.raises(openai.AuthenticationError) as caught:
            OpenAI(base_url=base, api_key=wrong, max_retries=0).models.list()
        assert caught.value.code == "invalid_api_key"
    assert httpx.get(f"{base}/no-such-route").status_code == 401, "unknown paths are not probed without a key"
    for key in ("sk-flag-1", "sk-flag-2", "sk-env"):
        assert {model.id for model in OpenAI(base_url=base, api_key=key, max_retries=0).models.list()} == {
            "tiny-chat",
            "tiny-sd",
        }
    chat = OpenAI(base_url=base, api_key="sk-env", max_retries=0).chat.completions.create(
        model="tiny-chat", messages=HELLO, max_tokens=3, temperature=0
    )
    assert chat.usage.completion_tokens == 3

"""OpenAI-compatible HTTP API under /v1, on the same server as the page.

- `GET /v1/models`: the chat and image models of the catalogue.
- `POST /v1/chat/completions`: streaming (server-sent events ending with `data: [DONE]`) or not, with
  `temperature`, `top_p`, `max_tokens`, `seed` and `stop`, and exact `usage`: prompt tokens as the
  model's tokenizer counts the templated conversation, completion tokens as generated.
- `POST /v1/images/generations`: `n`, `size`, `seed`, and `b64_json` or a `url` served from the output
  folder's images only (`GET /v1/files/images/<name>`, behind the same key).

A sibling of the tabs, not a layer on them: it calls the wrappers directly, through the one memory manager,
with the host's limits. Settings a request leaves out take the model's catalogue defaults, as on the
page; a conversation without a system message has none. Unlike the page, a model whose files are missing
is an error (503), not a silent fallback to another model: the response names the model that answered.
Closing a stream stops generation and ends the model's lease. See `running` for how runs are queued and
`access` for the keys.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Mount

from modules.api.access import RequireKey
from modules.api.errors import APIError, api_error, from_wrapper_error, http_error, invalid_body
from modules.api.running import BlockingRun, DeviceTurn, EventStream, api_client
from modules.serving import Serving
from modules.api.schemas import ChatCompletionRequest, ChatMessage, ImageRequest
from modules.wrappers.base import HostSettings, Wrapper
from modules.wrappers.chat import ChatProgress, ChatWrapper, Message
from modules.wrappers.text_to_image import DiffusersTextToImage, ImageResult

log = logging.getLogger(__name__)

#: The tasks this API serves.
API_TASKS = ("chat", "image")
#: wrapper setting -> the request field it comes from, so errors name what the client sent.
CHAT_PARAMS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_new_tokens": "max_tokens",
    "seed": "seed",
    "stop": "stop",
    "message": "messages",
    "history": "messages",
    "system_prompt": "messages",
}
IMAGE_PARAMS = {"prompt": "prompt", "width": "size", "height": "size", "batch": "n", "seed": "seed", "model": "model"}
SYSTEM_ROLES = ("system", "developer")


def openai_routes(
    wrappers: Mapping[str, Mapping[str, Wrapper]],
    host: HostSettings,
    serving: Serving,
    *,
    api_keys: tuple[str, ...],
    login_required: bool,
) -> list[BaseRoute]:
    """The /v1 routes, for the app Gradio launches (`launch(app_kwargs={"routes": ...})`)."""
    api = build_openai_app(wrappers, host, serving)
    if api_keys or login_required:
        api.add_middleware(RequireKey, keys=api_keys)
        if not api_keys:
            log.warning("--auth without --api-key: /v1 refuses every request until the host sets a key")
    return [Mount("/v1", app=api)]


def build_openai_app(wrappers: Mapping[str, Mapping[str, Wrapper]], host: HostSettings, serving: Serving) -> FastAPI:
    api = FastAPI(title="Atelier OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_exception_handler(APIError, api_error)  # type: ignore[arg-type]
    api.add_exception_handler(RequestValidationError, invalid_body)  # type: ignore[arg-type]
    api.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    started = int(time.time())

    def find(task: str, model_id: str) -> Any:
        group = wrappers.get(task, {})
        if model_id not in group:
            served = ", ".join(group) or "none"
            raise APIError(404, f"The model {model_id!r} does not exist here for this endpoint "
                                f"(models: {served}).", param="model", code="model_not_found")
        return group[model_id]

    def turn(request: Request, kind: str, wrapper: Wrapper) -> DeviceTurn:
        """The request's turn in the device's fair queue; the queue learns each kind's time per request."""
        return DeviceTurn(serving, api_client(serving, request), f"{kind}:{wrapper.entry.id}")

    async def run_to_end(items: Iterator[Any], params: Mapping[str, str], device: DeviceTurn) -> Any:
        """A wrapper's last item, run off the event loop once the device is this request's."""
        async with device.held():
            with translated(params):
                return await BlockingRun(items).last()

    def card(task: str, wrapper: Wrapper) -> dict[str, Any]:
        return {"id": wrapper.entry.id, "object": "model", "created": started, "owned_by": "atelier", "task": task}

    @api.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [card(task, w) for task in API_TASKS for w in wrappers.get(task, {}).values()]}

    @api.get("/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for task in API_TASKS:
            if model_id in wrappers.get(task, {}):
                return card(task, wrappers[task][model_id])
        raise APIError(404, f"The model {model_id!r} does not exist here.", param="model", code="model_not_found")

    @api.post("/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> dict[str, Any] | EventStream:
        wrapper: ChatWrapper = find("chat", body.model)
        system, history, message = split_conversation(body.messages, host.max_prompt_chars)
        max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = CHAT_PARAMS | ({"max_new_tokens": "max_completion_tokens"} if body.max_completion_tokens is not None else {})
        overrides = {
            "system_prompt": system,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "max_new_tokens": max_tokens,
            "seed": body.seed,
            "stop": body.stop_strings(),
        }
        with translated(params):  # refuse bad input before queueing
            wrapper.check_inputs(message, history, wrapper.settings(**overrides))
        reply = Reply(wrapper.entry.id)
        if not body.stream:
            final = await run_to_end(wrapper.generate(message, history, **overrides), params, turn(request, "chat", wrapper))
            assert isinstance(final, ChatProgress) and final.done
            return reply.completion(final)
        # Streaming: the first reply (or error) arrives before the response starts, so errors keep their status.
        run = BlockingRun(wrapper.generate(message, history, **overrides))
        device = turn(request, "chat", wrapper)
        await device.acquire()
        try:
            with translated(params):
                first = await run.next()
        except BaseException:
            await run.close()
            device.release()
            raise

        async def close() -> None:
            await run.close()
            device.release()

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return EventStream(reply.events(first, run, params, include_usage), on_close=close)

    @api.post("/images/generations")
    async def images_generations(body: ImageRequest, request: Request) -> dict[str, Any]:
        wrapper: DiffusersTextToImage = find("image", body.model)
        width, height = body.width_height()
        overrides = {"width": width, "height": height, "batch": body.n, "seed": body.seed}
        with translated(IMAGE_PARAMS):
            wrapper.check_inputs(body.prompt, wrapper.settings(**overrides))
        result = await run_to_end(wrapper.generate(body.prompt, **overrides), IMAGE_PARAMS, turn(request, "openai-image", wrapper))
        assert isinstance(result, ImageResult)
        if not result.images:
            raise APIError(400, f"The safety checker withheld all {result.withheld} image(s).",
                           code="content_policy_violation")
        data = []
        for image in result.images:
            if body.response_format == "b64_json":
                data.append({"b64_json": base64.b64encode(image.path.read_bytes()).decode("ascii")})
            else:
                data.append({"url": str(request.url_for("image_file", name=image.path.name))})
        return {"created": int(time.time()), "data": data}

    @api.get("/files/images/{name}", name="image_file")
    async def image_file(name: str) -> FileResponse:
        """A generated image, from the output folder's images and nowhere else."""
        folder = (host.output_dir / "images").resolve()
        path = (folder / name).resolve()
        if path.parent != folder or path.suffix != ".png" or not path.is_file():
            raise APIError(404, f"No generated image named {name!r}.", code="file_not_found")
        return FileResponse(path, media_type="image/png")

    return api


def split_conversation(messages: list[ChatMessage], max_chars: int) -> tuple[str, list[Message], str]:
    """(system prompt, history, last user message) as the chat wrappers take them; leading system (or
    developer) messages make the system prompt, and every message keeps to the host's prompt limit."""
    for index, turn in enumerate(messages):
        if len(turn.content) > max_chars:
            raise APIError(400, f"messages[{index}].content is {len(turn.content):,} characters; the limit on "
                                f"this server is {max_chars:,}", param=f"messages[{index}].content")
    leading = 0
    while leading < len(messages) and messages[leading].role in SYSTEM_ROLES:
        leading += 1
    for index in range(leading, len(messages)):
        if messages[index].role in SYSTEM_ROLES:
            raise APIError(400, f"messages[{index}].role: system messages are understood only at the start",
                           param=f"messages[{index}].role")
    if leading == len(messages) or messages[-1].role != "user":
        raise APIError(400, "messages must end with a user message", param="messages")
    system = "\n\n".join(turn.content for turn in messages[:leading])
    history = [{"role": turn.role, "content": turn.content} for turn in messages[leading:-1]]
    return system, history, messages[-1].content


@contextmanager
def translated(params: Mapping[str, str]) -> Iterator[None]:
    """Turn what a wrapper raises inside the block into an `APIError` naming the request's field."""
    try:
        yield
    except APIError:
        raise
    except Exception as exc:
        raise from_wrapper_error(exc, params) from None


class Reply:
    """One chat completion's response, whole or as chunks, in OpenAI's format."""

    def __init__(self, model_id: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model_id

    def _base(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    @staticmethod
    def usage(final: ChatProgress) -> dict[str, int]:
        return {"prompt_tokens": final.prompt_tokens, "completion_tokens": final.tokens,
                "total_tokens": final.prompt_tokens + final.tokens}

    def completion(self, final: ChatProgress) -> dict[str, Any]:
        choice = {"index": 0, "message": {"role": "assistant", "content": final.text},
                  "finish_reason": final.finish_reason, "logprobs": None}
        return self._base("chat.completion") | {"choices": [choice], "usage": self.usage(final)}

    def chunk(self, delta: dict[str, str], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return sse(self._base("chat.completion.chunk") | {"choices": [choice]})

    async def events(
        self, first: ChatProgress | None, run: BlockingRun[ChatProgress], params: Mapping[str, str], include_usage: bool
    ) -> AsyncIterator[str]:
        """The stream: the role, the text as it grows, the finish reason, the usage if asked, [DONE].

        A failure after the stream started is sent as an error event (the status line is already out).
        """
        yield self.chunk({"role": "assistant", "content": ""})
        sent, progress, final = "", first, None
        try:
            while progress is not None:
                if len(progress.text) > len(sent):  # the wrapper's text only grows
                    yield self.chunk({"content": progress.text[len(sent):]})
                    sent = progress.text
                final = progress if progress.done else final
                progress = await run.next()
        except Exception as exc:
            yield sse(from_wrapper_error(exc, params).body())
            return
        assert final is not None
        yield self.chunk({}, final.finish_reason)
        if include_usage:
            yield sse(self._base("chat.completion.chunk") | {"choices": [], "usage": self.usage(final)})
        yield "data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

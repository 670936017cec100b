"""Errors in OpenAI's shape (`{"error": {"message", "type", "param", "code"}}`) and what maps to them.

The wrappers' own errors name their settings (`max_new_tokens=0: ...`); the API names the field the
client sent instead (`max_tokens`), so a 400 always points at something in the request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modules.memory import MemoryManagerError, ModelTooLarge
from modules.wrappers.base import InvalidInput, ModelUnavailable

log = logging.getLogger(__name__)

#: Error types OpenAI uses, by status.
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               429: "rate_limit_error"}


class APIError(Exception):
    """An error response in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after  # seconds, sent as Retry-After (which OpenAI's clients honour)

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        retry = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return JSONResponse(self.body(), status_code=self.status, headers={**retry, **(headers or {})})


def from_wrapper_error(exc: Exception, params: Mapping[str, str]) -> APIError:
    """The API error for what a wrapper (or the memory manager under it) raised.

    `params` maps the wrapper's setting names to the request's field names, e.g. max_new_tokens -> max_tokens.
    """
    message = str(exc)
    if isinstance(exc, InvalidInput):
        # The first setting the message names is the one at fault ("the conversation is 9 tokens and
        # max_new_tokens=4000; ...": max_tokens).
        named = re.search(r"\b(" + "|".join(map(re.escape, params)) + r")\b", message) if params else None
        param = params[named.group(1)] if named else None
        if named and param != named.group(1):
            message = f"{param}: {message}"
        return APIError(400, message, param=param)
    if isinstance(exc, ModelUnavailable):
        return APIError(503, message, code="model_unavailable")
    if isinstance(exc, MemoryManagerError):
        # Busy or out of memory may pass (503: clients retry); a model too large for the budget will not.
        code = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()  # ModelTooLarge -> model_too_large
        return APIError(400 if isinstance(exc, ModelTooLarge) else 503, message, code=code)
    log.exception("API request failed", exc_info=exc)
    return APIError(500, f"Something went wrong ({type(exc).__name__}: {exc}). The server is still running.")


def field_path(location: tuple[int | str, ...]) -> str:
    """A pydantic location as the request spells it: ('messages', 0, 'content') -> messages[0].content."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a malformed body becomes OpenAI's 400 naming the first bad field."""
    error = exc.errors()[0]
    location = tuple(part for part in error["loc"] if part != "body")
    if error["type"] == "json_invalid":
        return APIError(400, "The request body is not valid JSON.").response()
    if not location:
        return APIError(400, "Send the request's fields as a JSON object, with 'Content-Type: application/json'.").response()
    param = field_path(location)
    given = f" (got {error['input']!r})" if error["type"] != "missing" else ""
    return APIError(400, f"{param}: {error['msg']}{given}", param=param).response()


async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown paths and wrong methods, in the same shape."""
    if exc.status_code == 404:
        message = f"Unknown request URL: {request.method} {request.url.path}."
        return APIError(404, message, code="unknown_url").response()
    return APIError(exc.status_code, str(exc.detail)).response(headers=exc.headers)


async def api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()

"""Who may call /v1: API keys sent as `Authorization: Bearer <key>`.

Keys come from `--api-key` (repeatable, comma-separated) and `$ATELIER_API_KEYS`. With `--auth` the page
needs a login and /v1 needs a key; keys given without `--auth` are required too. With neither, /v1 is as
open as the page. The check runs before anything else under /v1, unknown paths included.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from modules.api.errors import APIError

KEYS_VARIABLE = "ATELIER_API_KEYS"


def parse_api_keys(flag_values: Iterable[str], environ: Mapping[str, str] = os.environ) -> tuple[str, ...]:
    """Every key from the flags and the environment variable, each possibly comma-separated."""
    texts = [*flag_values, environ.get(KEYS_VARIABLE, "")]
    return tuple(key.strip() for text in texts for key in text.split(",") if key.strip())


class RequireKey:
    """ASGI middleware: refuse with a 401 in OpenAI's shape unless the request carries one of `keys`."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(Headers(scope=scope).get("authorization", ""))
            if refusal is not None:
                await refusal.response(headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, header: str) -> APIError | None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            how = "send one as 'Authorization: Bearer <key>'" if self.keys else "its host has set none (--api-key)"
            return APIError(401, f"This server requires an API key: {how}.", code="missing_api_key")
        given = key.strip().encode()
        # Compare with every key, in constant time, so the answer's timing says nothing about the keys.
        if not any([hmac.compare_digest(given, known) for known in self.keys]):
            return APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

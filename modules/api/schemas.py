"""The requests the OpenAI-compatible API accepts, as pydantic models.

Only the types and OpenAI's own rules live here; value ranges (temperature, sizes, lengths) are the
wrappers' settings schemas, so the page and the API refuse the same values. Fields OpenAI clients send
that do not change the result here (`user`, `presence_penalty`, ...) are ignored.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SIZE = re.compile(r"^(\d+)x(\d+)$")


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        """Content may also be a list of parts; only text parts mean something to these models."""
        if not isinstance(value, list):
            return value
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ValueError("only text content parts are supported by this server's chat models")
            texts.append(part["text"])
        return "".join(texts)


class StreamOptions(_Request):
    include_usage: bool = False


class ChatCompletionRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = Field(None, description="OpenAI's newer name for max_tokens")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")

    def stop_strings(self) -> list[str] | None:
        return [self.stop] if isinstance(self.stop, str) else self.stop


class ImageRequest(_Request):
    prompt: str
    model: str
    n: int = 1
    size: str | None = Field(None, description="WIDTHxHEIGHT, or auto for the model's own size")
    seed: int | None = Field(None, description="an extension: the same seed and settings give the same images")
    response_format: Literal["url", "b64_json"] = "url"

    @field_validator("size")
    @classmethod
    def _width_x_height(cls, value: str | None) -> str | None:
        if value is not None and value != "auto" and not SIZE.match(value):
            raise ValueError("size must be WIDTHxHEIGHT in pixels, e.g. 512x512, or auto")
        return value

    def width_height(self) -> tuple[int | None, int | None]:
        match = SIZE.match(self.size or "")
        return (int(match.group(1)), int(match.group(2))) if match else (None, None)

"""The OpenAI API's request bodies and error format, validated the way its clients expect.

Bad input answers 400 with ``{"error": {"message", "type", "param", "code"}}``, where
``param`` names the offending field (``messages.0.content``, ``max_tokens``), as OpenAI's
own API does; the official client raises ``openai.BadRequestError`` with it. Parameters
the runtime does not implement are refused by name rather than silently ignored, except
the few that clients send by default with neutral values (penalties of 0, ``user``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "CompletionRequest",
    "StreamOptions",
    "api_error",
    "validation_error",
]

MAX_N = 8
MAX_STOP = 4
MAX_STOP_CHARS = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = Field(default=None, ge=0.0, le=0.0)  # only neutral
    frequency_penalty: float | None = Field(default=None, ge=0.0, le=0.0)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if len(items) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not item or len(item) > MAX_STOP_CHARS for item in items):
            raise ValueError(f"stop sequences must have 1 to {MAX_STOP_CHARS} characters")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("exactly one prompt per request")
        return value

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def api_error(
    message: str, param: str | None = None, kind: str = "invalid_request_error",
    code: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validation_error(exc: ValidationError) -> dict[str, Any]:
    """The first problem, named by its field path (``messages.0.role``)."""
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = [str(part) for part in first["loc"] if not _is_union_branch(part)]
    param = ".".join(loc) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
    elif first["type"] == "missing":
        message = f"Missing required parameter: {param}"
    else:
        message = f"Invalid value for {param}: {message}"
    return api_error(message, param)


def _is_union_branch(part: Any) -> bool:
    """Pydantic names the union member it tried (``str``, ``list[...]``) inside ``loc``."""
    return isinstance(part, str) and (part in {"str", "int", "float"} or "[" in part)

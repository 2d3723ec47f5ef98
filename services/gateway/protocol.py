"""The OpenAI chat-completions protocol as this gateway speaks it, plus its own feedback and
ingest bodies. Fields follow the order of the official API; constraints live in the types.
Unknown fields are tolerated (clients send many) and logged; fields we know but do not
implement are refused with a clear 400 rather than silently ignored.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger(__name__)

# Known OpenAI request fields this gateway does not implement: refused when set.
UNSUPPORTED_FIELDS = (
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "modalities",
    "parallel_tool_calls", "prediction", "presence_penalty", "reasoning_effort", "response_format",
    "tool_choice", "tools", "top_logprobs", "web_search_options",
)
# Fields accepted and ignored on purpose (they only affect billing or storage on OpenAI's side).
IGNORED_FIELDS = ("service_tier", "store")


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)

    @model_validator(mode="after")
    def _has_text(self) -> "ChatMessage":
        if self.content is None:
            raise ValueError("content is required (tool calls are not supported by this gateway)")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content or [])


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16
    )
    n: int = Field(1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: str | None = Field(None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, str):
            v = [v]
        if v is not None and (len(v) > 4 or any(not s for s in v)):
            raise ValueError("stop takes up to 4 non-empty strings")
        return v

    def unsupported(self) -> str | None:
        """The first known-but-unimplemented field the client set, if any."""
        extra = self.model_extra or {}
        for name in UNSUPPORTED_FIELDS:
            value = extra.get(name)
            if value not in (None, False, 0, [], {}) and not (name == "response_format" and value == {"type": "text"}):
                return name
        unknown = sorted(set(extra) - set(UNSUPPORTED_FIELDS) - set(IGNORED_FIELDS))
        if unknown:
            log.info("ignoring unknown chat request fields: %s", ", ".join(unknown))
        return None


class FeedbackRequest(BaseModel):
    """Body of POST /v1/feedback."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128)
    kind: Literal["thumb", "rating", "choice", "edit", "regenerate", "copy"]
    draft: int = Field(0, ge=0)
    value: int | None = None
    text: str | None = None
    comment: str | None = None
    user: str | None = Field(None, max_length=256)
    session_id: str | None = Field(None, max_length=128)


class EventsRequest(BaseModel):
    """Body of POST /v1/events: items are validated one by one against the event schemas."""

    model_config = ConfigDict(extra="forbid")
    events: list[dict[str, Any]] = Field(min_length=1)

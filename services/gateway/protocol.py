"""The OpenAI chat-completions protocol as this gateway speaks it, in one module: the
request, the response, the stream chunk and the error body, plus the gateway's own
feedback, ingest and model-list bodies. Fields follow the order of the official API
(its reference examples); constraints live in the types.

Requests tolerate unknown fields (clients send many) and log them; fields we know but do
not implement are refused with a clear 400 rather than silently ignored. Responses are
built only from the models below (``extra="forbid"``), and the tests check what goes out
against the official ``openai.types.chat`` models.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger(__name__)

# Known OpenAI request fields this gateway does not implement: refused when set.
UNSUPPORTED_FIELDS = (
    "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs", "modalities",
    "parallel_tool_calls", "prediction", "presence_penalty", "reasoning_effort",
    "tool_choice", "tools", "top_logprobs", "web_search_options",
)
# Fields accepted and ignored on purpose (they only affect billing or storage on OpenAI's side).
IGNORED_FIELDS = ("service_tier", "store")


# -- chat completion requests ---------------------------------------------------------

class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


def _content_required(schema: dict) -> None:
    """In the JSON Schema, ``content`` is required and not null, as ``_has_text`` enforces."""
    schema["required"] = sorted({*schema.get("required", ()), "content"})
    content = schema["properties"]["content"]
    content["anyOf"] = [s for s in content["anyOf"] if s.get("type") != "null"]
    content.pop("default", None)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", json_schema_extra=_content_required)
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


class JSONSchemaFormat(BaseModel):
    """``response_format.json_schema``: a named JSON Schema every draft must follow."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")  # ``schema`` would shadow pydantic's BaseModel.schema
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _is_json_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        """A valid JSON Schema (against its meta-schema: 2020-12 unless ``$schema`` says
        otherwise); whether a backend can decode under it is the backend's to say."""
        from jsonschema import exceptions, validators

        try:
            validators.validator_for(v).check_schema(v)
        except exceptions.SchemaError as e:
            where = "/".join(str(p) for p in e.path)
            raise ValueError(f"not a valid JSON Schema{f' at {where}' if where else ''}: {e.message}") from None
        return v


class ResponseFormat(BaseModel):
    """``response_format``: ``text``, ``json_object`` (any JSON object) or ``json_schema``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> "ResponseFormat":
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("'json_schema' is required with type 'json_schema', and only with it")
        return self

    def as_sent(self) -> dict[str, Any]:
        """The field as the client sent it (what is recorded and passed on upstream)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


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
    response_format: ResponseFormat | None = None
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
            if value not in (None, False, 0, [], {}):
                return name
        unknown = sorted(set(extra) - set(UNSUPPORTED_FIELDS) - set(IGNORED_FIELDS))
        if unknown:
            log.info("ignoring unknown chat request fields: %s", ", ".join(unknown))
        return None


# -- responses: built by the gateway only ---------------------------------------------

def _omit_none(value) -> bool:
    return value is None


class _Response(BaseModel):
    """What the gateway sends: built by the gateway only, so unknown fields are a bug."""

    model_config = ConfigDict(extra="forbid")


# Passed through from the backend: the local backends say "stop" or "length"; an
# OpenAI-compatible upstream may say more, and refusing its word would fail the request.
FinishReason = str


class UsageInfo(_Response):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class ChatCompletionMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(_Response):
    index: int = Field(ge=0)
    message: ChatCompletionMessage
    logprobs: None = None  # not implemented (the request field is refused)
    finish_reason: FinishReason


class ChatCompletion(_Response):
    """The answer to a non-streaming request. ``id`` is the request id feedback refers to."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(ge=0)
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(_Response):
    """A piece of one draft; fields not set in this piece are left out of the JSON."""

    role: Literal["assistant"] | None = Field(None, exclude_if=_omit_none)
    content: str | None = Field(None, exclude_if=_omit_none)


class ChatCompletionChunkChoice(_Response):
    index: int = Field(ge=0)
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(_Response):
    """One server-sent event of a streamed answer. The last one, when the client asked
    for ``stream_options.include_usage``, has no choices and carries ``usage``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(ge=0)
    model: str
    system_fingerprint: str
    choices: list[ChatCompletionChunkChoice]
    usage: UsageInfo | None = Field(None, exclude_if=_omit_none)


class ErrorInfo(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorInfo


# -- the gateway's own bodies ---------------------------------------------------------

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


class FeedbackAccepted(_Response):
    """Answer of POST /v1/feedback."""

    id: str
    object: Literal["feedback"] = "feedback"
    request_id: str
    kind: str
    status: Literal["accepted"] = "accepted"


class EventsRequest(BaseModel):
    """Body of POST /v1/events: items are validated one by one against the event schemas."""

    model_config = ConfigDict(extra="forbid")
    events: list[dict[str, Any]] = Field(min_length=1)


class EventRejection(_Response):
    message: str
    param: str | None = None


class EventResult(_Response):
    """The fate of one ingest item: accepted with its event id, or rejected with why."""

    index: int = Field(ge=0)
    status: Literal["accepted", "rejected"]
    event_id: str | None = Field(None, exclude_if=_omit_none)
    error: EventRejection | None = Field(None, exclude_if=_omit_none)


class EventsResponse(_Response):
    """Answer of POST /v1/events: counts, and one result per item in the order sent."""

    object: Literal["list"] = "list"
    accepted: int = Field(ge=0)
    rejected: int = Field(ge=0)
    data: list[EventResult]


# -- models -----------------------------------------------------------------------------

class ModelCard(_Response):
    """One public alias. ``versions`` (ours, not OpenAI's) maps each version it routes to
    to its weight in percent."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "flywheel"
    versions: dict[str, float]


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]

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
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

log = logging.getLogger(__name__)

# Known OpenAI request fields this gateway does not implement: refused when set
# (``functions``/``function_call`` are OpenAI's deprecated form of ``tools``/``tool_choice``).
UNSUPPORTED_FIELDS = (
    "audio", "function_call", "functions", "modalities", "prediction", "reasoning_effort", "web_search_options",
)
#: Most tools one request may offer (OpenAI's limit).
MAX_TOOLS = 128
#: Longest tool call id a client may send back (ours are ``call_`` and 32 hex digits).
MAX_TOOL_CALL_ID = 128
# Fields accepted and ignored on purpose (they only affect billing or storage on OpenAI's side).
IGNORED_FIELDS = ("service_tier", "store")


# -- chat completion requests ---------------------------------------------------------

class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


def check_json_schema(v: dict[str, Any]) -> dict[str, Any]:
    """``v`` if it is a valid JSON Schema (against its meta-schema: 2020-12 unless
    ``$schema`` says otherwise); whether a backend can decode under it is the backend's to say."""
    from jsonschema import exceptions, validators

    try:
        validators.validator_for(v).check_schema(v)
    except exceptions.SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        raise ValueError(f"not a valid JSON Schema{f' at {where}' if where else ''}: {e.message}") from None
    return v


FunctionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]


class FunctionCall(BaseModel):
    """The function an assistant message called, as OpenAI sends it back: ``arguments`` is
    JSON text (kept as sent)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)
    arguments: str


class ToolCall(BaseModel):
    """One tool call of an assistant message in the history (or of a corrected answer)."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=MAX_TOOL_CALL_ID)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """One message of the history. ``content`` is required except on an assistant message
    that called tools (``tool_calls``); a ``tool`` message answers one of those calls by its
    ``tool_call_id``."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)
    tool_calls: list[ToolCall] | None = Field(None, min_length=1)
    tool_call_id: str | None = Field(None, min_length=1, max_length=MAX_TOOL_CALL_ID)

    @model_validator(mode="after")
    def _fits_its_role(self) -> "ChatMessage":
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant message has tool_calls")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("tool_call_id belongs on a 'tool' message")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a 'tool' message needs the 'tool_call_id' of the call it answers")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (only an assistant message with tool_calls may leave it out)")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content or [])

    def as_backend(self) -> dict[str, Any]:
        """The message as backends and events take it: text content (None for an assistant
        turn that only called tools), and the tool fields when set."""
        out: dict[str, Any] = {"role": self.role, "content": None if self.content is None else self.text()}
        if self.name:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump(mode="json") for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class FunctionDefinition(BaseModel):
    """A function the model may call: ``parameters`` is the JSON Schema of its arguments
    (left out: it takes none)."""

    model_config = ConfigDict(extra="forbid")
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _is_json_schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        return v if v is None else check_json_schema(v)


class Tool(BaseModel):
    """``tools[i]``: OpenAI's function tool."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64)


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the one function the model must call."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


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
        return check_json_schema(v)


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


def _tool_choice_kind(value: Any) -> str:
    return "union-mode" if isinstance(value, str) else "union-named"


# A string is one of the modes, an object names a function: only that branch is checked, so a
# 400 says what is wrong with it (``union-`` tags are left out of the param, errors.param_of).
ToolChoice = Annotated[Union[Annotated[Literal["none", "auto", "required"], Tag("union-mode")],
                             Annotated[NamedToolChoice, Tag("union-named")]], Discriminator(_tool_choice_kind)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[ChatMessage] = Field(min_length=1)
    model: str = Field(min_length=1)
    frequency_penalty: Penalty | None = None
    logit_bias: dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]] | None = (
        Field(None, max_length=1024, description="Token id (as a string) -> bias from -100 to 100."))
    logprobs: bool | None = None
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    metadata: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]] | None = Field(
        None, max_length=16
    )
    n: int = Field(1, ge=1)
    parallel_tool_calls: bool | None = None
    presence_penalty: Penalty | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    tool_choice: ToolChoice | None = None
    tools: list[Tool] | None = Field(None, max_length=MAX_TOOLS)
    top_logprobs: int | None = Field(None, ge=0, le=20)
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

    def inconsistency(self) -> tuple[str, str] | None:
        """``(param, message)`` for the first rule between fields the request breaks (what
        one field's type cannot say), as OpenAI words them; None when it is consistent."""
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) < len(names):
            dup = next(n for n in names if names.count(n) > 1)
            return "tools", f"Invalid 'tools': the function name '{dup}' appears twice; names must be unique."
        if not self.tools:
            if self.tool_choice is not None and self.tool_choice != "none":
                return "tool_choice", "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified."
            if self.parallel_tool_calls is not None:
                return ("parallel_tool_calls",
                        "Invalid value for 'parallel_tool_calls': only allowed when 'tools' are specified.")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            return ("tool_choice", f"Invalid value for 'tool_choice': function '{self.tool_choice.function.name}' is "
                    f"not among 'tools' ({', '.join(names)}).")
        if self.top_logprobs and not self.logprobs:
            return "top_logprobs", "Invalid value for 'top_logprobs': 'logprobs' must be true when 'top_logprobs' is set."
        calls: set[str] = set()  # ids of the latest assistant message's tool calls
        for i, m in enumerate(self.messages):
            if m.role == "assistant":
                calls = {c.id for c in m.tool_calls or []}
            elif m.role == "tool":
                if m.tool_call_id not in calls:
                    return (f"messages[{i}].tool_call_id",
                            f"Invalid value for 'messages[{i}].tool_call_id': a 'tool' message must answer a tool call "
                            f"of the assistant message before it; '{m.tool_call_id}' is not one.")
            else:
                calls = set()
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


class FunctionCallOut(_Response):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCallOut(_Response):
    """One tool call of an answer: ``id`` is ``call_`` and 32 hex digits (the backend's own
    with the ``openai`` backend); the client answers it with a ``tool`` message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Response):
    """The log-probability of one generated token, and of the likeliest alternatives."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(_Response):
    content: list[TokenLogprob] | None = None


class ChatCompletionMessage(_Response):
    """An answer: its text (None when it only called tools) and its tool calls."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = Field(None, exclude_if=_omit_none)


class ChatCompletionChoice(_Response):
    index: int = Field(ge=0)
    message: ChatCompletionMessage
    logprobs: ChoiceLogprobs | None = None  # with ``logprobs: true``
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


class DeltaFunction(_Response):
    name: str | None = Field(None, exclude_if=_omit_none)
    arguments: str | None = Field(None, exclude_if=_omit_none)


class DeltaToolCall(_Response):
    """A piece of tool call ``index`` of a draft: the first has ``id``, ``type`` and the
    function's ``name`` (with ``arguments: ""``); later ones add to ``arguments``."""

    index: int = Field(ge=0)
    id: str | None = Field(None, exclude_if=_omit_none)
    type: Literal["function"] | None = Field(None, exclude_if=_omit_none)
    function: DeltaFunction | None = Field(None, exclude_if=_omit_none)


class DeltaMessage(_Response):
    """A piece of one draft; fields not set in this piece are left out of the JSON."""

    role: Literal["assistant"] | None = Field(None, exclude_if=_omit_none)
    content: str | None = Field(None, exclude_if=_omit_none)
    tool_calls: list[DeltaToolCall] | None = Field(None, exclude_if=_omit_none)


class ChatCompletionChunkChoice(_Response):
    index: int = Field(ge=0)
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
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
    """Body of POST /v1/feedback. On an answer that called tools, ``tool_call_id`` names the
    call a thumb, rating or edit is about, and an ``edit`` may carry the corrected calls
    (``tool_calls``, the draft's calls as they should have been) instead of, or with, text."""

    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=128)
    kind: Literal["thumb", "rating", "choice", "edit", "regenerate", "copy"]
    draft: int = Field(0, ge=0)
    value: int | None = None
    text: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, min_length=1, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(None, min_length=1, max_length=MAX_TOOL_CALL_ID)
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

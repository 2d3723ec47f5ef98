"""The interface every serving backend implements.

A backend turns one chat request into ``n`` drafts. It exposes a single primitive,
:meth:`Backend.submit`, which returns a :class:`Generation`: an iterator of
:class:`Delta` pieces (text, tool-call pieces and token log-probabilities for one draft)
ending, per draft, with a ``finish_reason``. The gateway builds both the streaming and the
non-streaming answer from the same iterator (:class:`DraftAssembler`), so the two can never
disagree.

Requests carry OpenAI's tool fields (``tools``, ``tool_choice``, ``parallel_tool_calls``)
and the sampling fields beyond temperature and top-p (penalties, ``logit_bias``,
``logprobs``). A backend says which of the optional ones it honours in ``supports``
(:data:`FEATURES`); the gateway refuses the others with a 400 naming the field, before
anything is generated, rather than ignoring them.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal, Protocol

#: What ``response_format: {"type": "json_object"}`` asks for: any JSON object.
ANY_JSON_OBJECT: Mapping[str, Any] = {"type": "object"}

#: Optional request features a backend may honour (``Backend.supports``), each named after
#: the request field that asks for it.
FEATURES = frozenset({"tools", "response_format", "logprobs", "presence_penalty", "frequency_penalty", "logit_bias"})


@dataclasses.dataclass(frozen=True)
class ResponseFormat:
    """OpenAI's ``response_format``, as the client sent it (validated by the gateway).

    ``json_schema`` is OpenAI's object for ``type == "json_schema"`` (``name``,
    ``description``, ``schema``, ``strict``), kept whole so a backend that speaks OpenAI's
    protocol can pass it on unchanged (:meth:`to_openai`); a backend that decodes itself
    reads :attr:`schema`.
    """

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)

    @property
    def schema(self) -> Mapping[str, Any] | None:
        """The JSON Schema every draft must follow: the given one for ``json_schema`` (with
        or without ``strict``: a backend that can decode under it always does), any JSON
        object for ``json_object``, None for plain text."""
        if self.type == "json_schema":
            return (self.json_schema or {}).get("schema", ANY_JSON_OBJECT)
        if self.type == "json_object":
            return ANY_JSON_OBJECT
        return None

    def to_openai(self) -> dict[str, Any]:
        """The request field, as OpenAI's API takes it."""
        if self.json_schema is None:
            return {"type": self.type}
        return {"type": self.type, "json_schema": dict(self.json_schema)}


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """Decoding parameters, already validated by the gateway's protocol layer."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    response_format: ResponseFormat | None = None  # the shape every draft must take
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias) pairs
    logprobs: bool = False
    top_logprobs: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        """Whether the logits need changing before sampling (penalties, logit_bias)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One chat request as a backend sees it. ``messages`` are OpenAI chat messages
    (``role``, ``content`` (None for an assistant turn that only called tools), ``name``,
    an assistant's ``tool_calls``, a tool result's ``tool_call_id``); ``tools`` and
    ``tool_choice`` are OpenAI's, validated by the gateway (``tool_choice`` None: the
    request did not set it)."""

    messages: tuple[dict, ...]
    params: SamplingParams = SamplingParams()
    n: int = 1
    version: str = "base"  # the model version to serve (alias resolution happens upstream)
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str | Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)
    parallel_tool_calls: bool | None = None  # None: not set (OpenAI's default is true)

    @property
    def effective_tool_choice(self) -> str | Mapping[str, Any]:
        """``tool_choice`` with OpenAI's default: ``auto`` when tools are offered, else ``none``."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    def features(self) -> list[str]:
        """The optional features (:data:`FEATURES`) this request asks for, by field name."""
        p = self.params
        wanted = {
            "tools": bool(self.tools) or any(m.get("tool_calls") or m.get("role") == "tool" for m in self.messages),
            "response_format": p.response_format is not None and p.response_format.type != "text",
            "logprobs": p.logprobs,
            "presence_penalty": bool(p.presence_penalty),
            "frequency_penalty": bool(p.frequency_penalty),
            "logit_bias": bool(p.logit_bias),
        }
        return [name for name, on in wanted.items() if on]


@dataclasses.dataclass(frozen=True)
class ToolCallDelta:
    """A piece of tool call ``index`` (its position among the draft's calls), as OpenAI
    streams one: the first piece has ``id`` and ``name``, later ones add to ``arguments``."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclasses.dataclass(frozen=True)
class Delta:
    """A piece of draft ``index``. ``finish_reason`` is set on the last piece of that draft
    ("stop", "length", "tool_calls" or "error"); ``text`` may be empty on that piece.
    ``tool_calls``: pieces of the draft's tool calls; ``logprobs``: OpenAI's token
    log-probability entries (``token``, ``logprob``, ``bytes``, ``top_logprobs``) of the
    tokens behind this piece, when the request asked for them."""

    index: int
    text: str
    finish_reason: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    logprobs: tuple[Mapping[str, Any], ...] = ()


@dataclasses.dataclass
class DraftResult:
    """One finished draft: its text, why it ended, its tool calls (OpenAI's shape: ``id``,
    ``type``, ``function.name``, ``function.arguments``) and, when asked for, its tokens'
    log-probabilities."""

    text: str = ""
    finish_reason: str = "stop"
    tool_calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    logprobs: list[Mapping[str, Any]] = dataclasses.field(default_factory=list)


class DraftAssembler:
    """Adds :class:`Delta` pieces up into :class:`DraftResult` s, the way a client adds up a
    stream: text and arguments are concatenated, a tool call's id and name come from its
    first piece."""

    def __init__(self, n: int):
        self.drafts = [DraftResult() for _ in range(n)]

    def add(self, d: Delta) -> None:
        draft = self.drafts[d.index]
        draft.text += d.text
        for piece in d.tool_calls:
            while len(draft.tool_calls) <= piece.index:
                draft.tool_calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call = draft.tool_calls[piece.index]
            if piece.id:
                call["id"] = piece.id
            if piece.name:
                call["function"]["name"] += piece.name
            call["function"]["arguments"] += piece.arguments
        draft.logprobs.extend(d.logprobs)
        if d.finish_reason:
            draft.finish_reason = d.finish_reason


class BackendError(Exception):
    """The backend failed. ``status`` is the HTTP status the gateway should answer with:
    503 when it is unavailable or overloaded (retry later), 502 when it failed mid-way,
    400 when it cannot serve the request as asked (``param`` names the request field)."""

    def __init__(self, message: str, status: int = 502, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param


class PromptTooLong(BackendError):
    """The prompt does not fit the model's context (answered as HTTP 400, param ``messages``)."""

    def __init__(self, message: str):
        super().__init__(message, status=400)


class Generation:
    """The running generation of one request: iterate it to get :class:`Delta` pieces.

    Producers (backend threads) call :meth:`put`, :meth:`finish_draft` and :meth:`fail`;
    the consumer (the request thread) iterates. Token counts are filled in by the backend.
    """

    def __init__(self, n: int):
        self.n = n
        self.prompt_tokens = 0
        self.completion_tokens = [0] * n
        self.created = time.monotonic()
        self.first_token_at: float | None = None
        self._items: list[Delta | BackendError] = []
        self._cond = threading.Condition()
        self._open = n
        self.cancelled = False

    # -- producer side -------------------------------------------------------------
    def put(self, index: int, text: str, finish_reason: str | None = None, *,
            tool_calls: tuple[ToolCallDelta, ...] = (), logprobs: tuple[Mapping[str, Any], ...] = ()) -> None:
        with self._cond:
            if self.first_token_at is None and (text or tool_calls):
                self.first_token_at = time.monotonic()
            self._items.append(Delta(index, text, finish_reason, tuple(tool_calls), tuple(logprobs)))
            if finish_reason is not None:
                self._open -= 1
            self._cond.notify_all()

    def fail(self, error: BackendError) -> None:
        with self._cond:
            self._items.append(error)
            self._open = 0
            self._cond.notify_all()

    # -- consumer side -------------------------------------------------------------
    def cancel(self) -> None:
        """The client went away: backends stop generating for this request."""
        self.cancelled = True

    def __iter__(self) -> Iterator[Delta]:
        pos = 0
        while True:
            with self._cond:
                while pos >= len(self._items) and self._open > 0:
                    self._cond.wait()
                batch = self._items[pos:]
                pos = len(self._items)
                done = self._open <= 0
            for item in batch:
                if isinstance(item, BackendError):
                    raise item
                yield item
            if done and pos >= len(self._items):
                return

    def collect(self) -> list[tuple[str, str]]:
        """Run to completion: ``[(text, finish_reason), ...]`` per draft."""
        return [(d.text, d.finish_reason) for d in self.drafts()]

    def drafts(self) -> list[DraftResult]:
        """Run to completion: every draft whole, tool calls and log-probabilities included."""
        assembler = DraftAssembler(self.n)
        for d in self:
            assembler.add(d)
        return assembler.drafts


class Backend(Protocol):
    """What the gateway needs from a model server."""

    name: str
    #: The optional request features (:data:`FEATURES`) it honours; a request asking for
    #: another is refused by the gateway with a 400 naming the field.
    supports: frozenset[str]

    def versions(self) -> list[str]:
        """Model versions this backend can serve right now."""
        ...

    def submit(self, request: GenerationRequest) -> Generation:
        """Start generating; never blocks on the model. Raises BackendError(503) if the
        version is unknown to the backend or the queue is full."""
        ...

    def health(self) -> dict:
        """A small dict for /healthz (e.g. {"ok": True, "queue": 3})."""
        ...

    def close(self) -> None:
        ...
